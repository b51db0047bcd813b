//! A test binary's scenarios against ONE control plane, with libtest-mimic as the harness
//! (`harness = false`): the plane is started by the first scenario that runs (so
//! `--list` or a filter matching nothing starts nothing), shared by all of them — they
//! run in parallel and isolate themselves by namespace or name prefix ([`Ctx`]) — and torn
//! down after the last one, when the harness also checks that no process or port is left
//! and prints start-up and scenario timings and each component's peak memory.
//!
//! The standard harness cannot do this: it has no hook after the last test, and a
//! `static` control plane would never be stopped.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    process::ExitCode,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use libtest_mimic::{Arguments, Failed, Trial};

use crate::{ControlPlane, ControlPlaneBuilder, resources, signals, supervisor::lock, table};

/// How long one scenario may run.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

/// A scenario's body.
pub type ScenarioFn = fn(Ctx) -> Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A named scenario; build one with [`scenario!`](crate::scenario).
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    name: &'static str,
    run: ScenarioFn,
}

impl Scenario {
    /// A scenario called `name`.
    pub const fn new(name: &'static str, run: ScenarioFn) -> Self {
        Self { name, run }
    }
}

/// `scenario!(my_async_fn)`: a [`Scenario`] named after an `async fn(Ctx) -> Result<()>`.
#[macro_export]
macro_rules! scenario {
    ($f:ident) => {
        $crate::suite::Scenario::new(stringify!($f), |ctx| ::std::boxed::Box::pin($f(ctx)))
    };
}

/// What a scenario gets: the shared control plane and names of its own.
#[derive(Clone, Debug)]
pub struct Ctx {
    plane: Arc<ControlPlane>,
    scenario: &'static str,
}

impl Ctx {
    /// The shared control plane.
    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// An admin client.
    pub fn client(&self) -> kube::Client {
        self.plane.client()
    }

    /// This scenario's prefix for names: its name in kebab case, at most 40 characters.
    pub fn prefix(&self) -> String {
        let mut p: String = self
            .scenario
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        while p.ends_with('-') {
            p.pop();
        }
        p
    }

    /// A name no other scenario uses: `<prefix>-<suffix>` (for cluster-scoped objects).
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix())
    }

    /// This scenario's own namespace (`e2e-<prefix>`), created on first use.
    pub async fn namespace(&self) -> Result<String> {
        let ns = format!("e2e-{}", self.prefix());
        resources::ensure_namespace(&self.client(), &ns).await?;
        Ok(ns)
    }
}

struct Suite {
    name: &'static str,
    rt: tokio::runtime::Runtime,
    builder: Box<dyn Fn() -> ControlPlaneBuilder + Send + Sync>,
    plane: OnceLock<Result<Arc<ControlPlane>, String>>,
    results: Mutex<Vec<(&'static str, Duration, bool)>>,
    start_failure_told: AtomicBool,
}

impl Suite {
    fn plane(&self) -> Result<Arc<ControlPlane>, String> {
        self.plane
            .get_or_init(|| {
                self.rt
                    .block_on((self.builder)().start())
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
    }

    fn run(&self, s: Scenario) -> Result<(), Failed> {
        let plane = self.plane().map_err(|e| {
            // The whole story once; the other scenarios point to it.
            if self.start_failure_told.swap(true, Ordering::SeqCst) {
                Failed::from("the control plane did not start (see the first failure)")
            } else {
                Failed::from(e)
            }
        })?;
        let ctx = Ctx {
            plane: plane.clone(),
            scenario: s.name,
        };
        let began = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            // The timeout's timer must be created inside the runtime.
            self.rt
                .block_on(async { tokio::time::timeout(SCENARIO_TIMEOUT, (s.run)(ctx)).await })
        }));
        let failure = match outcome {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(format!("{e:#}")),
            Ok(Err(_)) => Some(format!("timed out after {SCENARIO_TIMEOUT:?}")),
            Err(panic) => Some(format!(
                "panicked: {}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("<non-string panic>")
            )),
        };
        lock(&self.results).push((s.name, began.elapsed(), failure.is_none()));
        match failure {
            None => Ok(()),
            Some(f) => {
                plane.keep_run_dir();
                Err(format!("{f}\n\n{}", plane.diagnostics()).into())
            }
        }
    }

    /// Stops the plane (if it was started) and prints the report; false if anything was
    /// left behind.
    fn tear_down(&self) -> bool {
        let Some(Ok(plane)) = self.plane.get() else {
            return true;
        };
        let teardown_began = Instant::now();
        let report = plane.shutdown();
        let took = teardown_began.elapsed();
        let mut results = lock(&self.results).clone();
        results.sort_by_key(|r| r.0);
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|(name, d, ok)| {
                vec![
                    name.to_string(),
                    format!("{:.2}", d.as_secs_f64()),
                    if *ok { "ok" } else { "FAILED" }.into(),
                ]
            })
            .collect();
        eprintln!(
            "\n{} suite: control plane {}\n{}teardown {:.1} s\n{report}",
            self.name,
            plane.timings(),
            table::render(&["SCENARIO", "SECONDS", "RESULT"], &rows),
            took.as_secs_f64(),
        );
        report.is_clean()
    }
}

/// The `main` of a scenario test binary: runs `scenarios` on one control plane from
/// `builder`, then tears it down. Fails when a scenario fails or the teardown left a
/// process or port behind.
pub fn main(
    name: &'static str,
    builder: impl Fn() -> ControlPlaneBuilder + Send + Sync + 'static,
    scenarios: &[Scenario],
) -> ExitCode {
    let args = Arguments::from_args();
    signals::install(signals::INTERRUPTED);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let suite = Arc::new(Suite {
        name,
        rt,
        builder: Box::new(builder),
        plane: OnceLock::new(),
        results: Mutex::new(Vec::new()),
        start_failure_told: AtomicBool::new(false),
    });
    let trials = scenarios
        .iter()
        .map(|s| {
            let (suite, s) = (suite.clone(), *s);
            Trial::test(s.name, move || suite.run(s))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    let clean = suite.tear_down();
    if !clean {
        eprintln!("{name} suite: FAILED hygiene: the teardown left processes or ports behind");
        return ExitCode::FAILURE;
    }
    conclusion.exit_code()
}
