//! Progress bars (file transfers) and a spinner (connecting), drawn on standard error only when
//! standard output is a terminal; scripts and pipes see none of it.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress is drawn at all.
fn wanted() -> bool {
    std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

/// A transfer's progress bar; invisible when there is no terminal.
#[derive(Debug)]
pub struct Transfer {
    bar: ProgressBar,
}

impl Transfer {
    /// A bar for `what` (`uploading report.pdf`), shown if `show` and there is a terminal.
    pub fn new(what: &str, show: bool) -> Transfer {
        let bar = if show && wanted() {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(what.to_owned());
        Transfer { bar }
    }

    /// Bytes done of `total`: the SDK's progress callback.
    pub fn update(&self, done: u64, total: u64) {
        if self.bar.length() != Some(total) {
            self.bar.set_length(total);
        }
        self.bar.set_position(done);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// A spinner with `message` until it is dropped or cleared; `None` without a terminal.
pub fn spinner(message: &str) -> Option<ProgressBar> {
    if !wanted() {
        return None;
    }
    let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
        spinner.set_style(style);
    }
    spinner.set_message(message.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(100));
    Some(spinner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_bars_follow_the_callback() {
        let t = Transfer::new("uploading x", false);
        t.update(5, 10);
        assert_eq!(t.bar.length(), Some(10));
        assert_eq!(t.bar.position(), 5);
        t.update(10, 10);
        t.finish();
        assert!(t.bar.is_finished());
    }
}
