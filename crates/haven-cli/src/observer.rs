//! The CLI's observer of engine events: logs them and drives a progress bar on a terminal.

use std::io::IsTerminal;
use std::sync::Mutex;

use haven_engine::events::{Event, LogObserver, Observer};
use indicatif::{ProgressBar, ProgressStyle};

pub struct CliObserver {
    bar: Mutex<Option<ProgressBar>>,
    show_progress: bool,
    /// Print each plan step as it starts and ends (not with --json).
    show_steps: bool,
    metrics: Option<std::sync::Arc<haven_engine::metrics::Metrics>>,
}

impl CliObserver {
    pub fn new(json: bool) -> Self {
        CliObserver {
            bar: Mutex::new(None),
            show_progress: !json && std::io::stderr().is_terminal(),
            show_steps: !json,
            metrics: None,
        }
    }

    /// Also counts every event into `metrics`.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<haven_engine::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn finish(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(bar) = b.take() {
                bar.finish_and_clear();
            }
        }
    }
}

impl Observer for CliObserver {
    fn event(&self, event: &Event) {
        LogObserver.event(event);
        if let Some(m) = &self.metrics {
            m.event(event);
        }
        if self.show_steps {
            match event {
                Event::StepStarted {
                    step, total, what, ..
                } => eprintln!("[{step}/{total}] {what} ..."),
                Event::StepDone {
                    step, total, ms, ..
                } => eprintln!("[{step}/{total}] done ({ms} ms)"),
                _ => {}
            }
        }
        if !self.show_progress {
            return;
        }
        let Ok(mut bar) = self.bar.lock() else { return };
        match event {
            Event::BackupStarted {
                target_records: Some(n),
                ..
            } => {
                let b = ProgressBar::new(*n);
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} backup [{bar:30}] {pos}/{len} records  {per_sec}  ETA {eta}  {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                *bar = Some(b);
            }
            Event::RestoreStarted { records } => {
                let b = ProgressBar::new(*records);
                b.set_style(
                    ProgressStyle::with_template(
                        "{spinner} restore [{bar:30}] {pos}/{len} records  {per_sec}  ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                *bar = Some(b);
            }
            Event::RestoreProgress { records } => {
                if let Some(b) = bar.as_ref() {
                    b.set_position(*records);
                }
            }
            Event::SegmentWritten { records, bytes, .. } => {
                if let Some(b) = bar.as_ref() {
                    b.inc(*records);
                    b.set_message(format!("last segment {}", crate::output::bytes(*bytes)));
                }
            }
            _ => {}
        }
    }
}
