//! Progress bars on a terminal, fed by polling the engines' atomic counters.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A progress bar refreshed by a background thread until dropped.
pub struct Ticker {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

/// Whether to draw progress: stderr is a terminal and neither --quiet nor --json.
pub fn wanted(cli: &crate::Cli) -> bool {
    !cli.quiet && !cli.json && std::io::stderr().is_terminal()
}

impl Ticker {
    /// Starts a bar; `poll` returns (done, total, message) and is called 5 times a second.
    pub fn start<F>(enabled: bool, poll: F) -> Ticker
    where
        F: Fn() -> (u64, u64, String) + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        if !enabled {
            return Ticker { stop, handle: None };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (done, total, msg) = poll();
                bar.set_length(total.max(done));
                bar.set_position(done);
                bar.set_message(msg);
                std::thread::sleep(Duration::from_millis(200));
            }
            bar.finish_and_clear();
        });
        Ticker {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
