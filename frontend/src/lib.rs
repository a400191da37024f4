//! Berth's dashboard: one Leptos component crate built twice, with `ssr` into `berth server`
//! (server-side rendering) and with `hydrate` into the wasm the browser loads. Server-only code is
//! fenced behind `#[cfg(feature = "ssr")]`.

pub mod app;

/// Entry point of the wasm build: takes over the server-rendered page.
#[cfg(feature = "hydrate")]
#[wasm_bindgen::prelude::wasm_bindgen]
pub fn hydrate() {
    console_error_panic_hook::set_once();
    leptos::mount::hydrate_body(app::App);
}
