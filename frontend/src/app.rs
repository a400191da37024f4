//! The dashboard's shell and pages.

use leptos::prelude::*;
use leptos_meta::{MetaTags, Title, provide_meta_context};
use leptos_router::components::{Route, Router, Routes};
use leptos_router::path;

/// The wasm and JS the shell loads are `/pkg/berth.js` and `/pkg/berth_bg.wasm`.
pub const OUTPUT_NAME: &str = "berth";

const STYLE: &str = include_str!("style.css");

/// The whole HTML document, rendered on the server.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8"/>
                <meta name="viewport" content="width=device-width, initial-scale=1"/>
                <style>{STYLE}</style>
                <HydrationScripts options/>
                <MetaTags/>
            </head>
            <body>
                <App/>
            </body>
        </html>
    }
}

#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    view! {
        <Title text="Berth"/>
        <Router>
            <header class="top">
                <a class="brand" href="/">"Berth"</a>
            </header>
            <main>
                <Routes fallback=|| view! { <p>"No such page."</p> }>
                    <Route path=path!("/") view=Home/>
                </Routes>
            </main>
        </Router>
    }
}

/// The landing page. Its button only answers once the page is hydrated, which is how the browser
/// test knows the wasm took over.
#[component]
fn Home() -> impl IntoView {
    let (live, set_live) = signal(false);
    view! {
        <h1>"Berth"</h1>
        <p>"The dashboard is on its way. Meanwhile the API is at " <code>"/api/v1"</code> " and the CLI does everything."</p>
        <button id="hydration-probe" on:click=move |_| set_live.set(true)>
            {move || if live.get() { "live" } else { "check" }}
        </button>
    }
}
