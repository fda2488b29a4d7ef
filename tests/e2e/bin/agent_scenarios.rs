//! `agent-scenarios`: the container scenario table, run against an `arca-agent` through
//! the host client. The same table runs on the host (`arca-agent serve`, process
//! isolation) and in a microVM (vsock), so both paths are held to the same behaviour.
//!
//! ```text
//! agent-scenarios (--unix PATH | --vsock UDS:PORT) --rootfs SOURCE --fstype dir|ext4
//!                 [--only NAME] [--shutdown]
//! ```
//! Prints `PASS name`, `SKIP name: why` or `FAIL name: why` per scenario and exits 1 if
//! any failed. `--shutdown` ends the agent (and its VM) afterwards.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use arca_agent_client::{AgentAddress, AgentClient, AgentClientError};
use arca_protocol::{
    ContainerSpec, ErrorCode, NetworkMode, ProcessSpec, Resources, Rootfs, StdioStream,
    WritableLayer,
};

struct Env {
    address: AgentAddress,
    rootfs: Rootfs,
    seq: u32,
}

struct Outcome {
    code: i32,
    signal: Option<i32>,
    oom: bool,
    stdout: String,
    stderr: String,
}

fn sh(script: &str) -> ProcessSpec {
    ProcessSpec {
        args: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

impl Env {
    fn client(&self) -> anyhow::Result<AgentClient> {
        Ok(AgentClient::connect(
            &self.address,
            Duration::from_secs(10),
        )?)
    }

    fn spec(&mut self, process: ProcessSpec) -> ContainerSpec {
        self.seq += 1;
        ContainerSpec {
            id: format!("s{}-{}", std::process::id(), self.seq),
            rootfs: self.rootfs.clone(),
            process,
            hostname: None,
            resources: Resources::default(),
            network: NetworkMode::Isolated,
            init: false,
            interfaces: Vec::new(),
            hosts: Vec::new(),
            dns: Vec::new(),
            mounts: Vec::new(),
            security: Default::default(),
            sysctls: Vec::new(),
        }
    }

    /// Create, attach stdout/stderr, start, collect, wait, remove.
    fn run(&self, spec: ContainerSpec) -> anyhow::Result<Outcome> {
        let mut c = self.client()?;
        let id = spec.id.clone();
        c.create(spec)?;
        let result = (|| {
            let out = self.address.attach(&id, None, StdioStream::Stdout)?;
            let err = self.address.attach(&id, None, StdioStream::Stderr)?;
            let started = c.start(&id);
            let out = std::thread::spawn(move || out.read_to_end_vec());
            let err = std::thread::spawn(move || err.read_to_end_vec());
            let status = c.wait(&id, None)?;
            let stdout = String::from_utf8_lossy(&out.join().expect("reader")?).into_owned();
            let stderr = String::from_utf8_lossy(&err.join().expect("reader")?).into_owned();
            if let Err(e) = started {
                // Exec failures still leave an exit status, as Docker reports them.
                if !matches!(&e, AgentClientError::Agent(a) if matches!(a.code, ErrorCode::CommandNotFound | ErrorCode::CommandNotExecutable))
                {
                    return Err(e.into());
                }
                return Ok(Outcome {
                    code: status.code,
                    signal: status.signal,
                    oom: status.oom_killed,
                    stdout,
                    stderr: e.to_string(),
                });
            }
            Ok(Outcome {
                code: status.code,
                signal: status.signal,
                oom: status.oom_killed,
                stdout,
                stderr,
            })
        })();
        c.remove(&id, true).context("remove")?;
        result
    }
}

type Scenario = fn(&mut Env) -> anyhow::Result<Option<String>>;

fn stdout_stderr_and_exit_zero(env: &mut Env) -> anyhow::Result<Option<String>> {
    let spec = env.spec(sh("echo out; echo err >&2"));
    let o = env.run(spec)?;
    ensure!(o.code == 0, "exit {}", o.code);
    ensure!(
        o.stdout == "out\n" && o.stderr == "err\n",
        "stdout {:?} stderr {:?}",
        o.stdout,
        o.stderr
    );
    Ok(None)
}

fn exit_code_one(env: &mut Env) -> anyhow::Result<Option<String>> {
    let spec = env.spec(sh("exit 1"));
    let o = env.run(spec)?;
    ensure!(
        o.code == 1 && o.signal.is_none(),
        "exit {} signal {:?}",
        o.code,
        o.signal
    );
    Ok(None)
}

fn killed_by_sigkill_is_137(env: &mut Env) -> anyhow::Result<Option<String>> {
    // PID 1 ignores SIGKILL from inside its own namespace (as under Docker): the host kills.
    let spec = env.spec(ProcessSpec {
        args: vec!["sleep".into(), "60".into()],
        ..Default::default()
    });
    let id = spec.id.clone();
    let mut c = env.client()?;
    c.create(spec)?;
    c.start(&id)?;
    c.signal(&id, None, 9)?;
    let st = c.wait(&id, None)?;
    c.remove(&id, false)?;
    ensure!(
        st.code == 137 && st.signal == Some(9),
        "exit {} signal {:?}",
        st.code,
        st.signal
    );
    // A child killed by a signal shows in the shell's own exit code.
    let spec = env.spec(sh("sh -c 'kill -9 $$'; exit $?"));
    let o = env.run(spec)?;
    ensure!(
        o.code == 137 && o.signal.is_none(),
        "exit {} signal {:?}",
        o.code,
        o.signal
    );
    Ok(None)
}

fn env_workdir_and_user_apply(env: &mut Env) -> anyhow::Result<Option<String>> {
    let mut p =
        sh("echo \"$FOO|$(pwd)|$(id -u):$(id -g)|$(id -G)|$HOME|$(hostname)|$(ulimit -n)\"");
    p.env = vec!["FOO=bar baz".into()];
    p.rlimits = vec![arca_protocol::Rlimit {
        name: "nofile".into(),
        soft: 123,
        hard: 456,
    }];
    p.cwd = Some("/work/dir".into());
    p.user = Some("app".into());
    let mut spec = env.spec(p);
    spec.hostname = Some("box1".into());
    let o = env.run(spec)?;
    ensure!(o.code == 0, "exit {} stderr {:?}", o.code, o.stderr);
    ensure!(
        o.stdout == "bar baz|/work/dir|1000:1000|1000 50|/home/app|box1|123\n",
        "got {:?}",
        o.stdout
    );
    Ok(None)
}

fn missing_command_is_127(env: &mut Env) -> anyhow::Result<Option<String>> {
    let spec = env.spec(ProcessSpec {
        args: vec!["no-such-command".into()],
        ..Default::default()
    });
    let o = env.run(spec)?;
    ensure!(o.code == 127, "exit {}", o.code);
    ensure!(
        o.stderr.contains("executable file not found"),
        "message {:?}",
        o.stderr
    );
    Ok(None)
}

fn non_executable_is_126(env: &mut Env) -> anyhow::Result<Option<String>> {
    let spec = env.spec(ProcessSpec {
        args: vec!["/etc/motd".into()],
        ..Default::default()
    });
    let o = env.run(spec)?;
    ensure!(o.code == 126, "exit {}", o.code);
    ensure!(
        o.stderr.contains("permission denied"),
        "message {:?}",
        o.stderr
    );
    Ok(None)
}

fn limits_unsupported(e: &anyhow::Error) -> Option<String> {
    match e.downcast_ref::<AgentClientError>() {
        Some(AgentClientError::Agent(a)) if a.code == ErrorCode::Unsupported => {
            Some(a.message.clone())
        }
        _ => None,
    }
}

fn memory_limit_oom_kills(env: &mut Env) -> anyhow::Result<Option<String>> {
    let mut spec = env.spec(sh(
        "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived ${#x}",
    ));
    spec.resources.memory_bytes = Some(32 << 20);
    let o = match env.run(spec) {
        Ok(o) => o,
        Err(e) => return limits_unsupported(&e).map(Some).ok_or(e),
    };
    ensure!(
        o.oom && o.code == 137,
        "exit {} oom {} stdout {:?}",
        o.code,
        o.oom,
        o.stdout
    );
    Ok(None)
}

fn pids_limit_stops_a_fork_bomb(env: &mut Env) -> anyhow::Result<Option<String>> {
    // The bomb runs in a subshell (a failed fork ends a shell); afterwards only builtins
    // and exec, which need no fork.
    let mut spec = env.spec(sh(
        "(i=0; while [ $i -lt 64 ]; do sleep 30 & i=$((i+1)); done) 2>/tmp/bomb.err; \
         while read -r l; do echo \"$l\" >&2; done </tmp/bomb.err; echo spawned; exec sleep 30",
    ));
    spec.resources.pids_max = Some(16);
    let id = spec.id.clone();
    let mut c = env.client()?;
    match c.create(spec) {
        Ok(_) => {}
        Err(AgentClientError::Agent(a)) if a.code == ErrorCode::Unsupported => {
            return Ok(Some(a.message));
        }
        Err(e) => return Err(e.into()),
    }
    let out = env.address.attach(&id, None, StdioStream::Stdout)?;
    let err = env.address.attach(&id, None, StdioStream::Stderr)?;
    c.start(&id)?;
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut first)?;
    let stats = c.stats(&id)?;
    c.remove(&id, true)?;
    let stderr = String::from_utf8_lossy(&err.read_to_end_vec()?).into_owned();
    ensure!(first == "spawned\n", "stdout {first:?}");
    ensure!(
        stats.pids <= 16 && stats.pids >= 8,
        "{} processes under a limit of 16",
        stats.pids
    );
    ensure!(
        stderr.contains("fork"),
        "no fork failure reported: {stderr:?}"
    );
    Ok(None)
}

fn host_processes_and_mounts_are_invisible(env: &mut Env) -> anyhow::Result<Option<String>> {
    let spec = env.spec(sh(
        "ls /proc | grep '^[0-9][0-9]*$' | wc -l; cut -d' ' -f2 /proc/mounts | sort -u | tr '\\n' ' '",
    ));
    let o = env.run(spec)?;
    let mut lines = o.stdout.lines();
    let procs: u32 = lines
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .with_context(|| format!("{:?}", o.stdout))?;
    ensure!(procs <= 4, "container sees {procs} processes");
    let allowed = [
        "/",
        "/proc",
        "/dev",
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/tty",
        "/dev/pts",
        "/dev/shm",
        "/sys",
        "/sys/fs/cgroup",
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/proc/sched_debug",
        "/proc/latency_stats",
        "/proc/sys",
        "/proc/sysrq-trigger",
        "/proc/irq",
        "/proc/bus",
        "/proc/fs",
        "/proc/acpi",
        "/proc/asound",
        "/proc/scsi",
        "/proc/timer_stats",
        "/sys/firmware",
        "/sys/devices/virtual/powercap",
    ];
    let mounts: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let foreign: Vec<&&str> = mounts.iter().filter(|m| !allowed.contains(m)).collect();
    ensure!(foreign.is_empty(), "foreign mounts visible: {foreign:?}");
    ensure!(mounts.contains(&"/proc"), "no /proc in {mounts:?}");
    Ok(None)
}

fn stdin_reaches_the_process_and_eof_ends_it(env: &mut Env) -> anyhow::Result<Option<String>> {
    let mut p = ProcessSpec {
        args: vec!["cat".into()],
        stdin: true,
        ..Default::default()
    };
    p.env.clear();
    let spec = env.spec(p);
    let id = spec.id.clone();
    let mut c = env.client()?;
    c.create(spec)?;
    let mut input = env.address.attach(&id, None, StdioStream::Stdin)?;
    let out = env.address.attach(&id, None, StdioStream::Stdout)?;
    c.start(&id)?;
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let expected = big.clone();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        input.write_all(&big)?;
        input.close_input()
    });
    let got = out.read_to_end_vec()?;
    writer.join().expect("writer")?;
    let status = c.wait(&id, None)?;
    c.remove(&id, false)?;
    ensure!(status.code == 0, "exit {}", status.code);
    ensure!(
        got == expected,
        "echoed {} of {} bytes",
        got.len(),
        expected.len()
    );
    Ok(None)
}

fn tty_mode_with_resize(env: &mut Env) -> anyhow::Result<Option<String>> {
    let p = ProcessSpec {
        terminal: true,
        ..sh("tty; stty size; echo TERM=$TERM")
    };
    let spec = env.spec(p);
    let id = spec.id.clone();
    let mut c = env.client()?;
    c.create(spec)?;
    let tty = env.address.attach(&id, None, StdioStream::Tty)?;
    c.resize(&id, None, 50, 120)?;
    c.start(&id)?;
    let out = String::from_utf8_lossy(&tty.read_to_end_vec()?).into_owned();
    let status = c.wait(&id, None)?;
    c.remove(&id, false)?;
    ensure!(status.code == 0, "exit {}", status.code);
    ensure!(
        out.contains("/dev/pts/") && out.contains("50 120") && out.contains("TERM=xterm"),
        "got {out:?}"
    );
    Ok(None)
}

fn exec_joins_a_running_container(env: &mut Env) -> anyhow::Result<Option<String>> {
    let spec = env.spec(sh("echo main > /tmp/marker; exec sleep 60"));
    let id = spec.id.clone();
    let mut c = env.client()?;
    c.create(spec)?;
    c.start(&id)?;
    // The exec waits for the main process's marker, so the order of the two is fixed.
    let p = sh(
        "while [ ! -f /tmp/marker ]; do sleep 0.05; done; cat /tmp/marker; cat /proc/1/comm; echo $$; hostname",
    );
    c.exec(&id, "e1", p)?;
    let out = env
        .address
        .attach(&id, Some("e1"), StdioStream::Stdout)?
        .read_to_end_vec()?;
    let st = c.wait(&id, Some("e1"))?;
    ensure!(st.code == 0, "exec exit {}", st.code);
    let out = String::from_utf8_lossy(&out).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    ensure!(
        lines.len() == 4 && lines[0] == "main" && lines[1] == "sleep" && lines[3] == id,
        "got {out:?}"
    );
    let pid: u32 = lines[2].parse()?;
    ensure!(pid > 1, "exec'd process is pid {pid} in the container");
    // The main process stays; remove needs force.
    let refused = c.remove(&id, false);
    ensure!(
        matches!(&refused, Err(AgentClientError::Agent(a)) if a.code == ErrorCode::InvalidState),
        "{refused:?}"
    );
    c.remove(&id, true)?;
    Ok(None)
}

fn a_signal_ends_a_sleeping_container(env: &mut Env) -> anyhow::Result<Option<String>> {
    // With init, PID 1 forwards SIGTERM to the command.
    let mut spec = env.spec(ProcessSpec {
        args: vec!["sleep".into(), "60".into()],
        ..Default::default()
    });
    spec.init = true;
    let id = spec.id.clone();
    let mut c = env.client()?;
    c.create(spec)?;
    c.start(&id)?;
    std::thread::sleep(Duration::from_millis(200));
    c.signal(&id, None, 15)?;
    let st = c.wait(&id, None)?;
    ensure!(st.code == 143, "exit {} after SIGTERM", st.code);
    // Without init, a shell that traps TERM decides.
    let spec2 = env.spec(sh("trap 'exit 42' TERM; sleep 60 & wait"));
    let id2 = spec2.id.clone();
    c.create(spec2)?;
    c.start(&id2)?;
    std::thread::sleep(Duration::from_millis(300));
    c.signal(&id2, None, 15)?;
    let st2 = c.wait(&id2, None)?;
    c.remove(&id, false)?;
    c.remove(&id2, true)?;
    ensure!(st2.code == 42, "trap exit {}", st2.code);
    Ok(None)
}

fn bad_requests_get_clear_errors(env: &mut Env) -> anyhow::Result<Option<String>> {
    let mut c = env.client()?;
    let mut spec = env.spec(sh("true"));
    spec.rootfs.source = "/no/such/image".into();
    let e = c.create(spec).unwrap_err();
    ensure!(
        matches!(&e, AgentClientError::Agent(a) if a.code == ErrorCode::BadRequest && a.message.contains("/no/such/image")),
        "{e}"
    );
    let e = c.exec("no-such-container", "x", sh("true")).unwrap_err();
    ensure!(
        matches!(&e, AgentClientError::Agent(a) if a.code == ErrorCode::NotFound),
        "{e}"
    );
    // Exec into a stopped container.
    let spec = env.spec(sh("true"));
    let id = spec.id.clone();
    c.create(spec.clone())?;
    let dup = c.create(spec).unwrap_err();
    ensure!(
        matches!(&dup, AgentClientError::Agent(a) if a.code == ErrorCode::AlreadyExists),
        "{dup}"
    );
    c.start(&id)?;
    c.wait(&id, None)?;
    let e = c.exec(&id, "x", sh("true")).unwrap_err();
    ensure!(
        matches!(&e, AgentClientError::Agent(a) if a.code == ErrorCode::InvalidState),
        "{e}"
    );
    c.remove(&id, false)?;
    // The agent still answers.
    c.ping()?;
    ensure!(
        c.list()?
            .iter()
            .all(|i| !i.id.starts_with(&format!("s{}-", std::process::id()))),
        "containers left behind"
    );
    Ok(None)
}

fn root_keeps_dockers_default_capabilities_without_mknod(
    env: &mut Env,
) -> anyhow::Result<Option<String>> {
    let script = "grep -E '^Cap(Eff|Bnd|Amb)' /proc/self/status | tr -s '\\t' ' '; \
                  mknod /tmp/disk b 8 0 2>/dev/null && echo mknod-ok || echo mknod-refused; \
                  mount -t tmpfs none /mnt 2>/dev/null && echo mount-ok || echo mount-refused";
    let spec = env.spec(sh(script));
    let o = env.run(spec)?;
    ensure!(o.code == 0, "exit {} stderr {:?}", o.code, o.stderr);
    let want = "CapEff: 00000000a00425fb\nCapBnd: 00000000a00425fb\nCapAmb: 0000000000000000\nmknod-refused\nmount-refused\n";
    ensure!(o.stdout == want, "got {:?}", o.stdout);
    let mut p = sh("grep -E '^Cap(Eff|Prm)' /proc/self/status | tr -s '\\t' ' '");
    p.user = Some("app".into());
    let spec = env.spec(p);
    let o = env.run(spec)?;
    ensure!(
        o.stdout == "CapPrm: 0000000000000000\nCapEff: 0000000000000000\n",
        "user app: {:?}",
        o.stdout
    );
    Ok(None)
}

fn hostile_frames_are_refused_and_the_agent_stays_up(
    env: &mut Env,
) -> anyhow::Result<Option<String>> {
    use std::io::Read;
    let read_all = |mut s: std::os::unix::net::UnixStream| -> anyhow::Result<Vec<u8>> {
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut v = Vec::new();
        s.read_to_end(&mut v)?;
        Ok(v)
    };
    // An oversize length prefix: the agent closes the connection without reading on.
    let mut s = env.address.connect_once()?;
    s.write_all(&u32::MAX.to_be_bytes())?;
    ensure!(
        read_all(s)?.is_empty(),
        "the agent answered an oversize frame"
    );
    // Garbage JSON: closed as well.
    let mut s = env.address.connect_once()?;
    s.write_all(&[0, 0, 0, 3, b'{', b'{', b'{'])?;
    ensure!(read_all(s)?.is_empty(), "the agent answered garbage");
    // A hello of another protocol version: a reply that says so, then close.
    let mut s = env.address.connect_once()?;
    let hello = arca_protocol::Hello {
        version: 999,
        channel: arca_protocol::Channel::Control,
    };
    s.write_all(&arca_protocol::encode_frame(&hello)?)?;
    let mut d = arca_protocol::FrameDecoder::new();
    d.push(&read_all(s)?);
    let reply: arca_protocol::HelloReply = d.next()?.context("no hello reply")?;
    let e = reply.error.context("version 999 accepted")?;
    ensure!(e.code == ErrorCode::VersionMismatch, "{e:?}");
    // A request frame that does not decode, after a good hello: an error, then close.
    let mut s = env.address.connect_once()?;
    let hello = arca_protocol::Hello {
        version: arca_protocol::PROTOCOL_VERSION,
        channel: arca_protocol::Channel::Control,
    };
    s.write_all(&arca_protocol::encode_frame(&hello)?)?;
    s.write_all(&[0, 0, 0, 2, b'{', b'}'])?;
    let mut d = arca_protocol::FrameDecoder::new();
    d.push(&read_all(s)?);
    let _: arca_protocol::HelloReply = d.next()?.context("no hello reply")?;
    let r: arca_protocol::Response = d.next()?.context("no error response")?;
    ensure!(
        matches!(&r.result, Err(e) if e.code == ErrorCode::BadRequest),
        "{r:?}"
    );
    env.client()?.ping()?;
    Ok(None)
}

const SCENARIOS: &[(&str, Scenario)] = &[
    ("stdout_stderr_and_exit_zero", stdout_stderr_and_exit_zero),
    ("exit_code_one", exit_code_one),
    ("killed_by_sigkill_is_137", killed_by_sigkill_is_137),
    ("env_workdir_and_user_apply", env_workdir_and_user_apply),
    ("missing_command_is_127", missing_command_is_127),
    ("non_executable_is_126", non_executable_is_126),
    ("memory_limit_oom_kills", memory_limit_oom_kills),
    ("pids_limit_stops_a_fork_bomb", pids_limit_stops_a_fork_bomb),
    (
        "host_processes_and_mounts_are_invisible",
        host_processes_and_mounts_are_invisible,
    ),
    (
        "stdin_reaches_the_process_and_eof_ends_it",
        stdin_reaches_the_process_and_eof_ends_it,
    ),
    ("tty_mode_with_resize", tty_mode_with_resize),
    (
        "exec_joins_a_running_container",
        exec_joins_a_running_container,
    ),
    (
        "a_signal_ends_a_sleeping_container",
        a_signal_ends_a_sleeping_container,
    ),
    (
        "bad_requests_get_clear_errors",
        bad_requests_get_clear_errors,
    ),
    (
        "hostile_frames_are_refused_and_the_agent_stays_up",
        hostile_frames_are_refused_and_the_agent_stays_up,
    ),
    (
        "root_keeps_dockers_default_capabilities_without_mknod",
        root_keeps_dockers_default_capabilities_without_mknod,
    ),
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut address = None;
    let (mut source, mut fstype, mut only) = (None, None, None);
    let mut shutdown = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut v = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--unix" => address = Some(AgentAddress::Unix(PathBuf::from(v()?))),
            "--vsock" => {
                let s = v()?;
                let (uds, port) = s.rsplit_once(':').context("--vsock UDS:PORT")?;
                address = Some(AgentAddress::Vsock {
                    uds: uds.into(),
                    port: port.parse()?,
                });
            }
            "--rootfs" => source = Some(v()?),
            "--fstype" => fstype = Some(v()?),
            "--only" => only = Some(v()?),
            "--shutdown" => shutdown = true,
            other => bail!("unknown argument {other}"),
        }
    }
    let mut env = Env {
        address: address.context("--unix or --vsock is required")?,
        rootfs: Rootfs {
            source: source.context("--rootfs is required")?,
            fstype: fstype.unwrap_or_else(|| "dir".into()),
            writable: WritableLayer::Tmpfs,
        },
        seq: 0,
    };
    let mut failed = 0;
    for (name, scenario) in SCENARIOS {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let t = Instant::now();
        match scenario(&mut env) {
            Ok(None) => println!("PASS {name} ({} ms)", t.elapsed().as_millis()),
            Ok(Some(why)) => println!("SKIP {name}: {why}"),
            Err(e) => {
                failed += 1;
                println!("FAIL {name}: {e:#}");
            }
        }
    }
    if shutdown {
        env.client()?.shutdown()?;
    }
    if failed > 0 {
        bail!("{failed} scenario(s) failed");
    }
    Ok(())
}
