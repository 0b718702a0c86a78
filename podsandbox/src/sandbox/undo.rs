//! Undo as a value: each step of a build registers how to take it back before taking it.
//! `rollback` runs them newest first; `commit` forgets them.

use std::future::Future;
use std::pin::Pin;

type Step = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

#[derive(Default)]
pub struct Undo {
    steps: Vec<(&'static str, Step)>,
}

impl Undo {
    pub fn new() -> Undo {
        Undo::default()
    }

    /// A blocking undo step (run on the blocking pool during rollback).
    pub fn push(&mut self, what: &'static str, step: impl FnOnce() + Send + 'static) {
        self.steps.push((
            what,
            Box::new(move || {
                Box::pin(async move {
                    let _ = tokio::task::spawn_blocking(step).await;
                })
            }),
        ));
    }

    /// An async undo step.
    pub fn push_async<F>(&mut self, what: &'static str, step: impl FnOnce() -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.steps.push((what, Box::new(move || Box::pin(step()))));
    }

    pub async fn rollback(mut self) {
        while let Some((what, step)) = self.steps.pop() {
            tracing::debug!(step = what, "undo");
            step().await;
        }
    }

    pub fn commit(mut self) {
        self.steps.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn rollback_runs_newest_first_and_commit_runs_nothing() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut undo = Undo::new();
        for n in 1..=3 {
            let log = log.clone();
            undo.push("step", move || log.lock().unwrap().push(n));
        }
        let l = log.clone();
        undo.push_async(
            "async step",
            move || async move { l.lock().unwrap().push(4) },
        );
        undo.rollback().await;
        assert_eq!(*log.lock().unwrap(), vec![4, 3, 2, 1]);

        let mut undo = Undo::new();
        let l = log.clone();
        undo.push("never", move || l.lock().unwrap().push(99));
        undo.commit();
        assert!(!log.lock().unwrap().contains(&99));
    }
}
