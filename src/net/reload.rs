//! Files read again on an interval (TLS certificates, the CA that signs collectors' requests): a
//! change that builds is used from then on; one that does not (a key that no longer matches its
//! certificate, a file half-written) is logged once and the previous one kept until the files are
//! right.

use std::fmt::Display;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What became of changed files: used, or refused (unreadable or unusable).
pub struct Reloads {
    pub ok: ::metrics::Counter,
    pub refused: ::metrics::Counter,
}

/// Reads the files' contents.
pub type Read<C, E> = Box<dyn Fn() -> Result<C, E> + Send>;
/// Builds what the contents describe.
pub type Build<C, T, E> = Box<dyn Fn(&C) -> Result<T, E> + Send>;

/// How one set of files is read and built.
pub struct Files<C, T, E> {
    /// For the logs: whose files these are (`TLS files of the opamp listener`).
    pub what: String,
    pub interval: Duration,
    /// Reads the files' contents, compared with the last ones to tell a change.
    pub read: Read<C, E>,
    pub build: Build<C, T, E>,
}

/// Reads `files` every interval until `shutdown`, sending what a change builds to `sender`.
pub async fn poll<C, T, E>(
    files: Files<C, T, E>,
    mut used: C,
    sender: watch::Sender<T>,
    counted: Reloads,
    shutdown: CancellationToken,
) where
    C: PartialEq,
    E: Display,
{
    let what = &files.what;
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(files.interval) => {}
        }
        let built = match (files.read)() {
            Ok(contents) if contents == used => continue,
            Ok(contents) => (files.build)(&contents).map(|built| (contents, built)),
            Err(err) => Err(err),
        };
        match built {
            Ok((contents, built)) => {
                info!(files = %what, "reloaded");
                sender.send_replace(built);
                counted.ok.increment(1);
                used = contents;
                failing = false;
            }
            Err(err) => {
                if !failing {
                    warn!(files = %what, error = %err, "changed files cannot be used; keeping the previous ones");
                }
                counted.refused.increment(1);
                failing = true;
            }
        }
    }
}
