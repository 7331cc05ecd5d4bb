//! `dpin` binary: see [`dpin_node::cli`].

fn main() {
    dpin_node::cli::main();
}
