//! Requests to load the pipeline file again: SIGHUP, and with `--watch` a change to the file.
//!
//! Requests are coalesced (the channel holds one): several signals or edits while a reload is
//! being made ask for one more reload, of the file as it is then.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, Receiver, Sender};

/// How often `--watch` looks at the file. Polling the file's length and modification time
/// needs no platform watcher and sees an editor's rename-over as well as a write in place.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// A receiver that yields once per reload request: every SIGHUP, and with `watch`, every change
/// of `path` (seen within half a second, once it has stopped changing for that long, so a file
/// half-written is not read).
pub fn requests(path: &Path, watch: bool) -> Receiver<()> {
    let (tx, rx) = bounded(1);
    hangups(tx.clone());
    if watch {
        let path = path.to_path_buf();
        // Stamped here, before the run loads the file, not by the thread when it first runs:
        // on a busy machine that can come after an edit, which would then never be seen (the
        // test that edits the file once the first record is answered failed so under load).
        // An edit between this stamp and the load costs one needless reload, never a lost one.
        let seen = stamp(&path);
        std::thread::Builder::new()
            .name("subpass-watch".into())
            .spawn(move || watch_file(path, seen, tx))
            .expect("spawn the file watcher");
    }
    rx
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn watch_file(path: PathBuf, mut seen: Option<(SystemTime, u64)>, tx: Sender<()>) {
    loop {
        std::thread::sleep(WATCH_EVERY);
        let now = stamp(&path);
        if now.is_none() || now == seen {
            continue;
        }
        // Changed: wait until it stops changing, then ask once.
        let mut last = now;
        loop {
            std::thread::sleep(WATCH_EVERY);
            let again = stamp(&path);
            if again == last {
                break;
            }
            last = again;
        }
        seen = last;
        tracing::info!(path = %path.display(), "the pipeline file changed: reloading");
        if tx.try_send(()).is_err() && tx.is_empty() {
            return; // the run is over
        }
    }
}

/// Every SIGHUP sends a request (a no-op where there are no such signals). Tokio waits for the
/// signal on a small thread of its own, as for SIGINT ([`super::shutdown`]).
fn hangups(tx: Sender<()>) {
    #[cfg(unix)]
    {
        let (installed_tx, installed) = bounded::<()>(1);
        std::thread::Builder::new()
            .name("subpass-sighup".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    use tokio::signal::unix::{signal, SignalKind};
                    let Ok(mut hup) = signal(SignalKind::hangup()) else {
                        return;
                    };
                    let _ = installed_tx.send(());
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP: reloading the pipeline file");
                        let _ = tx.try_send(());
                    }
                });
            })
            .expect("spawn the SIGHUP thread");
        // Once this returns a SIGHUP reloads rather than kills (its default action).
        let _ = installed.recv();
    }
    #[cfg(not(unix))]
    drop(tx);
}
