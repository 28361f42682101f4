//! The `pgtenant` binary: everything lives in the library; see `pgtenant --help`.

fn main() -> std::process::ExitCode {
    pgtenant::cli::main()
}
