//! What the coordinator has heard from its workers: each worker's latest counts, whether it
//! has finished its connect phase, and its final report. Workers send events over one bounded
//! channel (see [`crate::launch`]); the coordinator applies them here, phase after phase.

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::worker::{Counts, Event, WorkerReport};

/// The coordinator's view of its workers, fed by their events.
pub(crate) struct Tally {
    /// Events from every worker, tagged with the worker's index.
    events: mpsc::Receiver<(usize, Event)>,
    /// The latest counts of each worker (each event carries the worker's running totals).
    counts: Vec<Counts>,
    /// Whether each worker has ended its connect phase.
    ready: Vec<bool>,
    /// Each worker's final report, once it sent one.
    reports: Vec<Option<WorkerReport>>,
}

impl Tally {
    pub(crate) fn new(events: mpsc::Receiver<(usize, Event)>, workers: usize) -> Self {
        Tally {
            events,
            counts: vec![Counts::default(); workers],
            ready: vec![false; workers],
            reports: (0..workers).map(|_| None).collect(),
        }
    }

    fn apply(&mut self, i: usize, event: Event) {
        match event {
            Event::Progress(c) => self.counts[i] = c,
            Event::Ready(c) => (self.counts[i], self.ready[i]) = (c, true),
            Event::Report(r) => {
                (self.counts[i], self.ready[i]) = (r.counts, true);
                self.reports[i] = Some(r);
            }
        }
    }

    /// Waits for one event until `deadline` and applies it; false if none came in time or
    /// every worker is gone.
    pub(crate) async fn next_until(&mut self, deadline: Instant) -> bool {
        match tokio::time::timeout_at(deadline, self.events.recv()).await {
            Ok(Some((i, event))) => {
                self.apply(i, event);
                true
            }
            _ => false,
        }
    }

    /// Waits for one event, however long it takes; false once every worker is gone.
    pub(crate) async fn next(&mut self) -> bool {
        match self.events.recv().await {
            Some((i, event)) => {
                self.apply(i, event);
                true
            }
            None => false,
        }
    }

    /// Applies events until `until`.
    pub(crate) async fn wait_until(&mut self, until: Instant) {
        while self.next_until(until).await {}
    }

    pub(crate) fn all_ready(&self) -> bool {
        self.ready.iter().all(|r| *r)
    }

    /// A new round of connecting: no worker has finished it yet, and what they counted for the
    /// last round no longer counts. Called before the workers are told to start it, so every
    /// event that reports a worker ready comes after.
    pub(crate) fn restart_connect(&mut self) {
        self.ready.fill(false);
        for c in &mut self.counts {
            (c.connected, c.failed, c.setup_start_us, c.setup_done_us) = (0, 0, 0, 0);
        }
    }

    pub(crate) fn all_reported(&self) -> bool {
        self.reports.iter().all(Option::is_some)
    }

    /// The workers' counts, summed.
    pub(crate) fn total(&self) -> Counts {
        let mut total = Counts::default();
        for c in &self.counts {
            total += *c;
        }
        total
    }

    /// The final reports that came in.
    pub(crate) fn into_reports(self) -> Vec<WorkerReport> {
        self.reports.into_iter().flatten().collect()
    }
}
