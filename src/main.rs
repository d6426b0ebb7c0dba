use std::process::ExitCode;

use waverify::settings::{Flags, Settings, VARIABLES};
use waverify::startup::Application;
use waverify::telemetry;

/// The request path allocates many small, short-lived buffers (bodies,
/// JSON, records); mimalloc serves them with far less contention between
/// threads than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> ExitCode {
    let flags = match Flags::parse(std::env::args().skip(1)) {
        Ok(flags) => flags,
        Err(message) => {
            eprintln!("waverify: {message}");
            return ExitCode::from(2);
        }
    };
    if flags.help {
        print_help();
        return ExitCode::SUCCESS;
    }
    let settings = match Settings::from_env(&flags) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("waverify: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log_filter);
    let app = match Application::build(settings) {
        Ok(app) => app,
        Err(error) => {
            eprintln!("waverify: cannot start: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    match app.run_until_stopped().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("waverify: server error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The help text. A reader that goes away early (`waverify --help | head`)
/// ends the printing, not the process with a panic.
fn print_help() {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = (|| -> std::io::Result<()> {
        writeln!(out, "waverify: one-time login codes over WhatsApp\n")?;
        writeln!(out, "usage: waverify [--bind ADDR] [--data-dir DIR]\n")?;
        writeln!(out, "Configuration comes from these environment variables:")?;
        for (name, meaning) in VARIABLES {
            writeln!(out, "  {name:<30} {meaning}")?;
        }
        out.flush()
    })();
}
