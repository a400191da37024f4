// `sqlx::migrate!` embeds the migrations (both engines' sets): rebuild when one is added or changed.
fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
