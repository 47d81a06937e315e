//! Signals start the same cascade as EOF: SIGINT or SIGTERM stops the source, everything in
//! flight drains and is written, and the process exits 0. A second signal exits at once.

use crossbeam_channel::{bounded, Receiver};

/// A receiver that yields once when SIGINT or SIGTERM arrives. Tokio waits for the signals on a
/// small thread of its own, away from the compute threads.
///
/// The handlers are in place when this returns, so a signal that comes once the pipeline runs
/// (once a caller has seen output) always drains, never kills with the default action.
pub fn signal_listener() -> Receiver<()> {
    let (tx, rx) = bounded(1);
    let (installed_tx, installed) = bounded::<()>(1);
    std::thread::Builder::new()
        .name("subpass-signals".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async move {
                #[cfg(unix)]
                {
                    use tokio::signal::unix::{signal, SignalKind};
                    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                        return;
                    };
                    let _ = installed_tx.send(());
                    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                    tracing::info!("signal received: finishing the chunks in flight (signal again to exit now)");
                    let _ = tx.try_send(());
                    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
                    std::process::exit(130);
                }
                #[cfg(not(unix))]
                {
                    drop(installed_tx);
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = tx.try_send(());
                }
            });
        })
        .expect("spawn the signal thread");
    // An error means no handler could be installed: the default actions stay, as before.
    let _ = installed.recv();
    rx
}
