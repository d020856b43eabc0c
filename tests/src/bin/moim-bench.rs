//! `moim-bench`: benchmark programs that print figures.
fn main() {
    eprintln!("moim-bench: not yet implemented");
    std::process::exit(2);
}
