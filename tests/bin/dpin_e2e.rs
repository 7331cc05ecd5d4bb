//! The `dpin` CLI built inside the test crate (see Cargo.toml): identical code, stable path.

fn main() {
    dpin_node::cli::main();
}
