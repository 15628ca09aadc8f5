//! Why the running request's answer may be incomplete (a peer that did not answer). The API
//! opens a scope per request; the query runner carries it onto the query runtime; whoever
//! finds a part missing notes it; the API turns the notes into the `x-skein-partial` header
//! (and Prometheus `warnings`).

use std::future::Future;
use std::sync::Arc;

use parking_lot::Mutex;

/// The notes of one request.
#[derive(Clone, Default, Debug)]
pub struct Notes(Arc<Mutex<Vec<String>>>);

impl Notes {
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock())
    }
    pub fn list(&self) -> Vec<String> {
        self.0.lock().clone()
    }
}

tokio::task_local! {
    static NOTES: Notes;
}

/// Runs `f` with `notes` collecting what is noted inside it.
pub fn scope<F: Future>(notes: Notes, f: F) -> impl Future<Output = F::Output> {
    NOTES.scope(notes, f)
}

/// The current request's notes, if it runs under [`scope`].
pub fn current() -> Option<Notes> {
    NOTES.try_with(|n| n.clone()).ok()
}

/// Notes that the current answer lacks something (once per distinct message).
pub fn note(message: String) {
    let _ = NOTES.try_with(|n| {
        let mut v = n.0.lock();
        if !v.contains(&message) {
            v.push(message);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_are_collected_inside_their_scope_only() {
        note("outside".into());
        let notes = Notes::default();
        scope(notes.clone(), async {
            note("peer a".into());
            note("peer a".into());
        })
        .await;
        assert_eq!(notes.list(), vec!["peer a"]);
    }
}
