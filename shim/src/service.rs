//! The shim: containerd's `Shim` (start, delete) and the task service
//! (task API v2), one task and so one VM per shim process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use containerd_shim::api;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, TtrpcContext, TtrpcResult};
use containerd_shim_protos::events::task::{
    TaskCheckpointed, TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{CodedInputStream, MessageDyn, MessageField};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::{self, context::Context as TtrpcClientContext, Code};
use containerd_shim_protos::types::task::ProcessInfo;
use serde::{Deserialize, Serialize};

use crate::config::{self, ShimConfig};
use crate::process::{Exit, Phase, Proc, Stdio};
use crate::rootfs::{self, RootSource};
use crate::sandbox::{Sandbox, TASK_DISK};
use crate::spec::{ProcessSpec, Spec};

/// What the shim adds to a checkpoint beside the Hearth snapshot.
const CHECKPOINT_META: &str = "hearth-shim.json";

#[derive(Debug, Serialize, Deserialize)]
struct CheckpointMeta {
    /// The agent's id of the task's init process.
    init: u64,
    /// Whether it was started with stdin (an attachment may write to it
    /// only then).
    stdin: bool,
}

/// The shim and its task service.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    id: String,
    /// The socket containerd talks to this shim on (`unix://PATH`).
    socket: String,
    exit: ExitSignal,
    publisher: Mutex<Option<RemotePublisher>>,
    task: Mutex<Option<Task>>,
}

struct Task {
    id: String,
    bundle: String,
    dir: PathBuf,
    sandbox: Arc<Sandbox>,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
    /// After a restore: the init process to attach to at Start, and
    /// whether it has stdin.
    restored_init: Option<(u64, bool)>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn status(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::error::get_rpc_status(code, msg.to_string())
}

fn internal(e: anyhow::Error) -> ttrpc::Error {
    log::error!("{e:#}");
    status(Code::INTERNAL, format!("{e:#}"))
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        ..Default::default()
    }
}

/// The shim's own pid: the VMM runs in it, so it stands for every
/// process of the task towards containerd.
fn shim_pid() -> u32 {
    std::process::id()
}

/// The `config_path` of containerd's `runtimeoptions.v1.Options` (field
/// 2), if the options are of that type.
fn options_config_path(options: &Any) -> Option<String> {
    if !options.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&options.value);
    let mut path = None;
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        match tag {
            // field 2, length-delimited
            0x12 => path = input.read_string().ok(),
            _ => {
                if input
                    .skip_field(containerd_shim_protos::protobuf::rt::WireType::new(tag & 7)?)
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    path
}

/// Whether runc-style checkpoint options ask to stop the task after it.
fn checkpoint_exits(options: &Any) -> bool {
    if !options.type_url.ends_with("CheckpointOptions") {
        return false;
    }
    let mut input = CodedInputStream::from_bytes(&options.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        if tag == 0x08 {
            return input.read_bool().unwrap_or(false);
        }
        match containerd_shim_protos::protobuf::rt::WireType::new(tag & 7) {
            Some(w) if input.skip_field(w).is_ok() => {}
            _ => break,
        }
    }
    false
}

fn load_config(options: &Any, annotations: &HashMap<String, String>) -> anyhow::Result<ShimConfig> {
    let from_options = options_config_path(options);
    let env = std::env::var(config::CONFIG_ENV).ok();
    let path = config::locate(from_options.as_deref(), env.as_deref());
    ShimConfig::load(&path)?.with_annotations(annotations)
}

/// The task's scratch directory.
fn task_dir(cfg: &ShimConfig, namespace: &str, id: &str) -> PathBuf {
    cfg.state_dir.join(namespace).join(id)
}

/// Moves (or, across file systems, copies) `from`'s files into `to`.
fn take_checkpoint(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let dest = to.join(e.file_name());
        if std::fs::rename(e.path(), &dest).is_err() {
            std::fs::copy(e.path(), &dest).with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    Ok(())
}

impl containerd_shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                namespace: args.namespace.clone(),
                id: args.id.clone(),
                socket: args.socket.clone(),
                exit: ExitSignal::default(),
                publisher: Mutex::new(None),
                task: Mutex::new(None),
            }),
        }
    }

    fn start_shim(&mut self, opts: containerd_shim::StartOpts) -> Result<String, containerd_shim::Error> {
        let grouping = opts.id.clone();
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        // The shim is gone (crashed or killed): remove what it left, as
        // far as the configuration it would have used says.
        let env = std::env::var(config::CONFIG_ENV).ok();
        if let Ok(cfg) = ShimConfig::load(&config::locate(None, env.as_deref())) {
            let dir = task_dir(&cfg, &self.inner.namespace, &self.inner.id);
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(DeleteResponse {
            exit_status: 128 + 9,
            exited_at: MessageField::some(timestamp(SystemTime::now())),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.inner.exit.wait();
        // containerd-shim removes the socket after this through the
        // bundle's `address` file, which containerd may have deleted by
        // then: remove it here (the connection in use stays open).
        if let Some(path) = self.inner.socket.strip_prefix("unix://") {
            if let Err(e) = std::fs::remove_file(path) {
                log::warn!("removing {path}: {e}");
            }
        }
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        *lock(&self.inner.publisher) = Some(publisher);
        self.clone()
    }
}

impl Inner {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(p) = lock(&self.publisher).as_ref() {
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
            if let Err(e) = p.publish(ctx, topic, &self.namespace, event) {
                log::warn!("publishing {topic}: {e}");
            }
        }
    }

    fn publish_exit(&self, container: &str, proc: &Proc, exit: Exit) {
        let id = if proc.exec_id.is_empty() {
            container.to_string()
        } else {
            proc.exec_id.clone()
        };
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: container.to_string(),
                id,
                pid: shim_pid(),
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                ..Default::default()
            }),
        );
    }

    /// The callback a process calls with its exit.
    fn on_exit(self: &Arc<Self>, container: &str) -> crate::process::OnExit {
        let me = self.clone();
        let container = container.to_string();
        Box::new(move |proc: &Proc, exit: Exit| {
            if proc.exec_id.is_empty() {
                // The init ended: the container is over; so are its
                // other processes (as when a PID namespace's init dies).
                let others: Vec<Arc<Proc>> = lock(&me.task)
                    .as_ref()
                    .map(|t| t.execs.values().cloned().collect())
                    .unwrap_or_default();
                let agent = lock(&me.task).as_ref().map(|t| t.sandbox.agent.clone());
                for p in others {
                    if let (Some(id), Some(a)) = (p.agent_id(), &agent) {
                        if p.exit().is_none() {
                            let _ = a.signal(id, libc::SIGKILL);
                        }
                    }
                }
            }
            me.publish_exit(&container, proc, exit);
        })
    }

    fn with_task<T>(&self, f: impl FnOnce(&mut Task) -> TtrpcResult<T>) -> TtrpcResult<T> {
        match lock(&self.task).as_mut() {
            Some(t) => f(t),
            None => Err(status(Code::NOT_FOUND, "no task")),
        }
    }

    fn proc(&self, exec_id: &str) -> TtrpcResult<(Arc<Proc>, Arc<Sandbox>, String)> {
        self.with_task(|t| {
            let p = if exec_id.is_empty() {
                t.init.clone()
            } else {
                t.execs
                    .get(exec_id)
                    .cloned()
                    .ok_or_else(|| status(Code::NOT_FOUND, format!("no process {exec_id}")))?
            };
            Ok((p, t.sandbox.clone(), t.id.clone()))
        })
    }

    fn create(self: &Arc<Self>, req: &api::CreateTaskRequest) -> anyhow::Result<u32> {
        if lock(&self.task).is_some() {
            bail!("this shim already runs a task");
        }
        let bundle = Path::new(&req.bundle);
        let spec = Spec::parse(&std::fs::read(bundle.join("config.json")).context("reading config.json")?)?;
        let process = spec.process.clone().context("the spec has no process")?;
        let cfg = load_config(req.options.get_or_default(), &spec.annotations)?;
        let dir = task_dir(&cfg, &self.namespace, &req.id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let result = self.create_in(req, &cfg, &dir, &spec);
        let (sandbox, restored_init) = match result {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        *lock(&self.task) = Some(Task {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            dir,
            sandbox: Arc::new(sandbox),
            init: Proc::new("", stdio, Some(process)),
            execs: HashMap::new(),
            restored_init,
        });
        self.spawn_vm_watch();
        Ok(shim_pid())
    }

    fn create_in(
        &self,
        req: &api::CreateTaskRequest,
        cfg: &ShimConfig,
        dir: &Path,
        spec: &Spec,
    ) -> anyhow::Result<(Sandbox, Option<(u64, bool)>)> {
        let root = spec.root.clone().unwrap_or_default();
        if !req.checkpoint.is_empty() {
            let ckpt = dir.join("checkpoint");
            take_checkpoint(Path::new(&req.checkpoint), &ckpt)?;
            let meta: CheckpointMeta = serde_json::from_slice(
                &std::fs::read(ckpt.join(CHECKPOINT_META))
                    .context("the checkpoint has no hearth-shim.json")?,
            )?;
            let snapshot = hearth::Snapshot::open(&ckpt)?;
            let recorded = snapshot
                .config()
                .disks
                .get(TASK_DISK)
                .cloned()
                .context("the checkpoint has no task disk")?;
            // The frozen layers moved with the checkpoint.
            let mut disk = recorded.clone().overlay(dir.join("rootfs.overlay"));
            disk.layers = recorded
                .layers
                .iter()
                .map(|l| ckpt.join(l.file_name().unwrap_or_default()))
                .collect();
            let sandbox = Sandbox::restore(cfg, &req.id, dir, &ckpt, Some(disk))?;
            return Ok((sandbox, Some((meta.init, meta.stdin))));
        }
        let mounts: Vec<rootfs::RootMount> = req
            .rootfs
            .iter()
            .map(|m| rootfs::RootMount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        let overlay = dir.join("rootfs.overlay");
        let disk = match rootfs::source(&mounts, Some(&root.path), Path::new(&req.bundle))? {
            RootSource::Dir(d) => {
                let base = rootfs::image_for_dir(&d, &cfg.cache_dir, cfg.disk_size_mib)?;
                hearth::DiskConfig::file(base).overlay(overlay)
            }
            RootSource::Overlay { source, options } => {
                let target = dir.join("rootfs.mnt");
                let base =
                    rootfs::image_for_overlay(&source, &options, &target, &cfg.cache_dir, cfg.disk_size_mib)?;
                hearth::DiskConfig::file(base).overlay(overlay)
            }
            RootSource::Block(dev) => hearth::DiskConfig::file(dev),
        };
        let sandbox = match &cfg.template {
            Some(t) => Sandbox::restore(cfg, &req.id, dir, t, Some(disk))?,
            None => Sandbox::boot(cfg, &req.id, dir, disk)?,
        };
        sandbox.mount_root(root.readonly)?;
        Ok((sandbox, None))
    }

    /// When the VM stops on its own (the guest crashed or powered off),
    /// every process still running has ended.
    fn spawn_vm_watch(self: &Arc<Self>) {
        let Some((sandbox, id)) = lock(&self.task)
            .as_ref()
            .map(|t| (t.sandbox.clone(), t.id.clone()))
        else {
            return;
        };
        let me = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("shim-vm-watch".into())
            .spawn(move || {
                let reason = sandbox.vm.wait();
                drop(sandbox);
                let Some(me) = me.upgrade() else { return };
                let procs: Vec<Arc<Proc>> = match lock(&me.task).as_ref() {
                    Some(t) => std::iter::once(t.init.clone())
                        .chain(t.execs.values().cloned())
                        .collect(),
                    None => return,
                };
                for p in procs {
                    if p.phase() == Phase::Running {
                        log::warn!(
                            "task {id}: the VM stopped ({reason}) under process {:?}",
                            p.exec_id
                        );
                        if let Some(exit) = p.set_exit(128 + 9) {
                            me.publish_exit(&id, &p, exit);
                        }
                    }
                }
            });
    }

    fn start(self: &Arc<Self>, exec_id: &str) -> TtrpcResult<u32> {
        let (p, sandbox, id) = self.proc(exec_id)?;
        let restored = if exec_id.is_empty() {
            self.with_task(|t| Ok(t.restored_init.take()))?
        } else {
            None
        };
        let on_exit = self.on_exit(&id);
        let t = std::time::Instant::now();
        match restored {
            Some((agent_id, stdin)) => p.attach(&sandbox.agent, agent_id, stdin, on_exit),
            None => p.start(&sandbox.agent, on_exit),
        }
        .map_err(internal)?;
        log::info!(
            "task {id}: process {exec_id:?} started in the guest in {} ms",
            t.elapsed().as_millis()
        );
        if exec_id.is_empty() {
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: id,
                    pid: shim_pid(),
                    ..Default::default()
                }),
            );
        } else {
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: id,
                    exec_id: exec_id.to_string(),
                    pid: shim_pid(),
                    ..Default::default()
                }),
            );
        }
        Ok(shim_pid())
    }

    fn kill(&self, req: &api::KillRequest) -> TtrpcResult<()> {
        let (p, sandbox, id) = self.proc(&req.exec_id)?;
        let signal = i32::try_from(req.signal).map_err(|_| status(Code::INVALID_ARGUMENT, "bad signal"))?;
        let mut targets = vec![p.clone()];
        if req.all && req.exec_id.is_empty() {
            targets.extend(self.with_task(|t| Ok(t.execs.values().cloned().collect::<Vec<_>>()))?);
        }
        if p.phase() == Phase::Stopped {
            return Err(status(Code::NOT_FOUND, "process already finished"));
        }
        if p.phase() == Phase::Created {
            if let Some(exit) = p.set_exit(128 + req.signal) {
                self.publish_exit(&id, &p, exit);
            }
            return Ok(());
        }
        // A paused VM answers no agent request; SIGKILL stops it whole.
        let dead = sandbox.vm.is_paused() || sandbox.vm.exit_reason().is_some();
        if dead {
            if signal == libc::SIGKILL && req.exec_id.is_empty() {
                self.kill_vm(&id, &sandbox);
                return Ok(());
            }
            return Err(status(
                Code::FAILED_PRECONDITION,
                "the task's VM is paused or stopped",
            ));
        }
        for t in targets {
            let Some(agent_id) = t.agent_id() else { continue };
            if t.phase() != Phase::Running {
                continue;
            }
            if let Err(e) = sandbox.agent.signal(agent_id, signal) {
                if signal == libc::SIGKILL && t.exec_id.is_empty() {
                    log::warn!("task {id}: the agent did not take SIGKILL ({e}): stopping the VM");
                    self.kill_vm(&id, &sandbox);
                    return Ok(());
                }
                return Err(status(Code::UNAVAILABLE, format!("signal: {e}")));
            }
        }
        Ok(())
    }

    /// Stops the VM: every process ends as if killed by SIGKILL.
    fn kill_vm(&self, id: &str, sandbox: &Sandbox) {
        sandbox.vm.stop();
        let procs: Vec<Arc<Proc>> = lock(&self.task)
            .as_ref()
            .map(|t| {
                std::iter::once(t.init.clone())
                    .chain(t.execs.values().cloned())
                    .collect()
            })
            .unwrap_or_default();
        for p in procs {
            if p.phase() != Phase::Stopped {
                if let Some(exit) = p.set_exit(128 + 9) {
                    self.publish_exit(id, &p, exit);
                }
            }
        }
    }

    fn delete(&self, exec_id: &str) -> TtrpcResult<api::DeleteResponse> {
        if !exec_id.is_empty() {
            let p = self.with_task(|t| {
                let p = t
                    .execs
                    .get(exec_id)
                    .cloned()
                    .ok_or_else(|| status(Code::NOT_FOUND, format!("no process {exec_id}")))?;
                if p.phase() == Phase::Running {
                    return Err(status(Code::FAILED_PRECONDITION, "the process is running"));
                }
                t.execs.remove(exec_id);
                Ok(p)
            })?;
            let exit = p.exit();
            return Ok(api::DeleteResponse {
                pid: shim_pid(),
                exit_status: exit.map_or(0, |e| e.status),
                exited_at: MessageField::some(timestamp(exit.map_or(SystemTime::now(), |e| e.at))),
                ..Default::default()
            });
        }
        let task = lock(&self.task)
            .take()
            .ok_or_else(|| status(Code::NOT_FOUND, "no task"))?;
        // Stop the VM, then every file the shim made for the task goes.
        task.sandbox.vm.stop();
        let exit = task.init.set_exit(128 + 9).map_or_else(|| task.init.exit(), Some);
        let Task { id, dir, sandbox, .. } = task;
        drop(sandbox);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            log::warn!("removing {}: {e}", dir.display());
        }
        let exit = exit.unwrap_or(Exit {
            status: 128 + 9,
            at: SystemTime::now(),
        });
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: id.clone(),
                pid: shim_pid(),
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                id,
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid: shim_pid(),
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    fn checkpoint(&self, req: &api::CheckpointTaskRequest) -> anyhow::Result<()> {
        let (init, sandbox, id) = self.proc("").map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let agent_id = match (init.phase(), init.agent_id()) {
            (Phase::Running, Some(a)) => a,
            _ => bail!("the task is not running"),
        };
        let path = Path::new(&req.path);
        let was_paused = sandbox.vm.is_paused();
        if !was_paused {
            // Disks agree with guest memory.
            sandbox.agent.sync().context("syncing the guest's file systems")?;
            sandbox.vm.pause().context("pausing the VM")?;
        }
        let result = sandbox
            .vm
            .snapshot(path)
            .context("snapshotting the VM")
            .and_then(|_| {
                let meta = serde_json::to_vec(&CheckpointMeta {
                    init: agent_id,
                    stdin: !init.stdio.stdin.is_empty(),
                })?;
                std::fs::write(path.join(CHECKPOINT_META), meta).context("writing the checkpoint's metadata")
            });
        let exit = checkpoint_exits(req.options.get_or_default());
        if exit {
            self.kill_vm(&id, &sandbox);
        } else if !was_paused {
            sandbox.vm.resume().context("resuming the VM")?;
        }
        result?;
        self.publish(
            topics::TASK_CHECKPOINTED_EVENT_TOPIC,
            Box::new(TaskCheckpointed {
                container_id: id,
                checkpoint: req.path.clone(),
                ..Default::default()
            }),
        );
        Ok(())
    }
}

impl containerd_shim::Task for Service {
    fn connect(&self, _ctx: &TtrpcContext, _req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: shim_pid(),
            task_pid: shim_pid(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if lock(&self.inner.task).is_some() {
            return Err(status(Code::FAILED_PRECONDITION, "the task is not deleted"));
        }
        self.inner.exit.signal();
        Ok(api::Empty::default())
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self.inner.create(&req).map_err(internal)?;
        self.inner.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let pid = self.inner.start(&req.exec_id)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let (p, sandbox, _) = self.inner.proc(&req.exec_id)?;
        let bundle = self.inner.with_task(|t| Ok(t.bundle.clone()))?;
        let st = match p.phase() {
            Phase::Created => api::Status::CREATED,
            Phase::Stopped => api::Status::STOPPED,
            Phase::Running if sandbox.vm.is_paused() => api::Status::PAUSED,
            Phase::Running => api::Status::RUNNING,
        };
        let exit = p.exit();
        Ok(api::StateResponse {
            id: req.id,
            bundle,
            pid: shim_pid(),
            status: st.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (p, _, _) = self.inner.proc(&req.exec_id)?;
        let exit = p.wait();
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        self.inner.kill(&req)?;
        Ok(api::Empty::default())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        self.inner.delete(&req.exec_id)
    }

    fn pids(&self, _ctx: &TtrpcContext, _req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let procs: Vec<Arc<Proc>> = self.inner.with_task(|t| {
            Ok(std::iter::once(t.init.clone())
                .chain(t.execs.values().cloned())
                .collect())
        })?;
        let processes = procs
            .iter()
            .filter(|p| p.phase() == Phase::Running)
            .map(|p| ProcessInfo {
                pid: u32::try_from(p.guest_pid()).unwrap_or(0),
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let spec = ProcessSpec::parse(&req.spec.get_or_default().value)
            .map_err(|e| status(Code::INVALID_ARGUMENT, format!("{e:#}")))?;
        let id = self.inner.with_task(|t| {
            if t.execs.contains_key(&req.exec_id) {
                return Err(status(
                    Code::ALREADY_EXISTS,
                    format!("process {} exists", req.exec_id),
                ));
            }
            let stdio = Stdio {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            t.execs
                .insert(req.exec_id.clone(), Proc::new(&req.exec_id, stdio, Some(spec)));
            Ok(t.id.clone())
        })?;
        self.inner.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: id,
                exec_id: req.exec_id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<api::Empty> {
        let (p, _, _) = self.inner.proc(&req.exec_id)?;
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let cols = u16::try_from(req.width).unwrap_or(u16::MAX);
        p.resize(rows, cols)
            .map_err(|e| status(Code::FAILED_PRECONDITION, format!("{e:#}")))?;
        Ok(api::Empty::default())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let (p, _, _) = self.inner.proc(&req.exec_id)?;
        if req.stdin {
            p.close_stdin();
        }
        Ok(api::Empty::default())
    }

    fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        let (_, sandbox, id) = self.inner.proc("")?;
        sandbox.vm.pause().map_err(|e| internal(e.into()))?;
        self.inner.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn resume(&self, _ctx: &TtrpcContext, _req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        let (_, sandbox, id) = self.inner.proc("")?;
        sandbox.vm.resume().map_err(|e| internal(e.into()))?;
        // The guest's clock may have stopped with its vCPUs: the agent
        // sets it from the host's (a guest without an agent just lags).
        if let Err(e) = sandbox
            .vm
            .agent()
            .and_then(|a| a.timeout(Some(std::time::Duration::from_secs(10))).refresh())
        {
            log::warn!("resume: the guest clock was not set: {e}");
        }
        self.inner.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: id,
                ..Default::default()
            }),
        );
        Ok(api::Empty::default())
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, req: api::CheckpointTaskRequest) -> TtrpcResult<api::Empty> {
        self.inner.checkpoint(&req).map_err(internal)?;
        Ok(api::Empty::default())
    }

    fn stats(&self, _ctx: &TtrpcContext, _req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        let (sandbox, running) = self.inner.with_task(|t| {
            let running = std::iter::once(&t.init)
                .chain(t.execs.values())
                .filter(|p| p.phase() == Phase::Running)
                .count();
            Ok((t.sandbox.clone(), running))
        })?;
        let metrics = crate::stats::metrics(&sandbox.vm.metrics(), running as u64);
        Ok(api::StatsResponse {
            stats: MessageField::some(crate::stats::pack(&metrics)),
            ..Default::default()
        })
    }
}

// Unused in the sync client, named so the import is not dead.
#[allow(dead_code)]
type ClientContext = TtrpcClientContext;

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    #[test]
    fn config_path_from_runtime_options() {
        // runtimeoptions.v1.Options {type_url: "x", config_path: "/etc/h.toml"}
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/h.toml");
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(options_config_path(&any).as_deref(), Some("/etc/h.toml"));
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            ..Default::default()
        };
        assert_eq!(options_config_path(&other), None);
        // Garbage ends the parse, it does not panic.
        let bad = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: vec![0x12, 200, 1],
            ..Default::default()
        };
        assert_eq!(options_config_path(&bad), None);
    }

    #[test]
    fn checkpoint_exit_option() {
        let opts = containerd_shim::api::Options::default();
        assert!(opts.write_to_bytes().is_ok());
        let any = Any {
            type_url: "containerd.runc.v1.CheckpointOptions".into(),
            value: vec![0x08, 1],
            ..Default::default()
        };
        assert!(checkpoint_exits(&any));
        let any = Any {
            type_url: "containerd.runc.v1.CheckpointOptions".into(),
            value: vec![0x10, 1],
            ..Default::default()
        };
        assert!(!checkpoint_exits(&any));
        assert!(!checkpoint_exits(&Any::default()));
    }
}
