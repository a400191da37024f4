//! Berth's dashboard: one Leptos component crate built twice, with `ssr` into `berth server`
//! (server-side rendering) and with `hydrate` into the wasm the browser loads. Server-only code is
//! fenced behind `#[cfg(feature = "ssr")]`.

#![recursion_limit = "256"]

pub mod api;
pub mod app;
mod pages;
mod ui;

/// Entry point of the wasm build: takes over the server-rendered page.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
    // Browser tests (and curious users) can tell that the page is interactive.
    if let Some(body) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.body()) {
        let _ = body.set_attribute("data-hydrated", "true");
    }
}
