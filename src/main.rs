//! The `pgtenant` binary: everything lives in the library; see `pgtenant --help`.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    pgtenant::cli::main()
}
