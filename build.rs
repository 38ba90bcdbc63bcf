//! Rebuilds the binary when a migration is added or removed: `sqlx::migrate!` embeds the
//! `migrations/` directory, which cargo does not watch by itself (a removed file would
//! otherwise stay in the binary until some source file changed).

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
