//! The load generator, run in the benchmark's own process: started in the background and
//! handed back once its ramp has ended, so the benchmark acts while it measures.

use opampd_load::{Args, Hooks, LoadError, Report, Stage};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Starts `args`' run and waits until its collectors are connected; `stop`, when sent `true`,
/// ends the measurement early. Await the handle for the report.
pub async fn measuring(
    args: Args,
    stop: Option<watch::Receiver<bool>>,
) -> JoinHandle<Result<Report, LoadError>> {
    let (stage_tx, mut stage) = watch::channel(Stage::Starting);
    let load = tokio::spawn(opampd_load::run_with(
        args,
        Hooks {
            stage: Some(stage_tx),
            stop,
        },
    ));
    stage
        .wait_for(|s| *s == Stage::Measuring)
        .await
        .expect("the ramp ends");
    load
}
