//! `arca`: Docker-style containers, each in its own KVM microVM (`--isolation=vm`, the
//! default) or on this host (`--isolation=process`).
//!
//! Commands: `pull`, `load`, `images`, `rmi`, `tag`, `inspect`, `run` (foreground or
//! `-d`), `ps`, `logs`,
//! `stop`, `kill`, `rm`, `wait`, `exec`, `cp`. Exit codes follow Docker: the container's own;
//! 125 when arca fails; 126/127 when the command cannot be run or found.

mod compose_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use arca_runtime::container::config::{self, RestartPolicy};
use arca_runtime::container::{Isolation, RunOptions, find, lifecycle, view};
use arca_runtime::image::store::Store;
use arca_runtime::logs::LogOptions;
use arca_runtime::run::{self, run};
use arca_runtime::{error_chain, network, state, volume};
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "arca",
    version,
    about = "Containers in KVM microVMs, the docker way"
)]
struct Cli {
    /// State directory (images, containers). Default: $ARCA_STATE_DIR, /var/lib/arca as
    /// root, else $XDG_DATA_HOME/arca.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Load images from a `docker save` tarball or an OCI image layout tarball.
    Load {
        /// The archive.
        #[arg(short, long)]
        input: PathBuf,
    },
    /// Pull an image from a registry (HTTPS; plain HTTP for loopback or --insecure).
    Pull {
        /// Fall back to plain HTTP for a registry that is not on loopback.
        #[arg(long)]
        insecure: bool,
        /// Print nothing but errors.
        #[arg(short, long)]
        quiet: bool,
        /// NAME[:TAG|@DIGEST].
        reference: String,
    },
    /// Get real time events: containers, images, networks and volumes.
    Events {
        /// Filter output based on conditions provided (container, event, image, label,
        /// network, type, volume).
        #[arg(short, long)]
        filter: Vec<String>,
        /// Format the output using a Go template, or `json`.
        #[arg(long)]
        format: Option<String>,
        /// Show all events created since timestamp.
        #[arg(long)]
        since: Option<String>,
        /// Stream events until this timestamp.
        #[arg(long)]
        until: Option<String>,
    },
    /// Log in to a registry; the credentials go to Docker's config.json
    /// ($DOCKER_CONFIG/config.json, else ~/.docker/config.json).
    Login {
        /// User name.
        #[arg(short, long)]
        username: Option<String>,
        /// Password or token (insecure: use --password-stdin).
        #[arg(short, long)]
        password: Option<String>,
        /// Read the password or token from stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Fall back to plain HTTP for a registry that is not on loopback (arca's flag:
        /// Docker sets this up in its daemon).
        #[arg(long)]
        insecure: bool,
        /// The registry (`host[:port]`; Docker Hub when omitted).
        server: Option<String>,
    },
    /// Log out from a registry (remove its credentials from config.json).
    Logout {
        /// The registry (`host[:port]`; Docker Hub when omitted).
        server: Option<String>,
    },
    /// Push an image to a registry.
    Push {
        /// Push every tag of the repository.
        #[arg(short = 'a', long)]
        all_tags: bool,
        /// Print only the pushed name.
        #[arg(short, long)]
        quiet: bool,
        /// Fall back to plain HTTP for a registry that is not on loopback.
        #[arg(long)]
        insecure: bool,
        /// NAME[:TAG].
        name: String,
    },
    /// Save images to a `docker save` tarball.
    Save {
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
        /// Images.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Add a name to an image.
    Tag {
        /// Existing image.
        source: String,
        /// New NAME[:TAG].
        target: String,
    },
    /// Show containers or images as JSON.
    Inspect {
        /// Print each with a Go template instead (Docker's functions).
        #[arg(short, long)]
        format: Option<String>,
        /// Only this kind of object: container or image.
        #[arg(long = "type", value_parser = ["container", "image"])]
        kind: Option<String>,
        /// Container or image names.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List images.
    Images {
        /// Show all images (by default the steps a build keeps for its cache are
        /// hidden).
        #[arg(short, long)]
        all: bool,
        /// Only show image IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Don't truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Print with a Go template, `table TEMPLATE`, `table` or `json`.
        #[arg(long)]
        format: Option<String>,
        /// Only images of this repository (`NAME[:TAG]`).
        repository: Option<String>,
    },
    /// Show the history of an image.
    History {
        /// Only show image IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Don't truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Print sizes and dates in human readable format (the default; false is not
        /// supported).
        #[arg(short = 'H', long, default_value_t = true)]
        human: bool,
        /// Print with a Go template, `table TEMPLATE`, `table` or `json`.
        #[arg(long)]
        format: Option<String>,
        /// The image.
        image: String,
    },
    /// Remove images (a tag; the image goes with its last tag).
    Rmi {
        /// Image names or ids.
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Run a command in a new container.
    Run(Box<RunArgs>),
    /// Create a new container without starting it (prints its name).
    Create(Box<RunArgs>),
    /// Start created or stopped containers.
    Start {
        /// Attach to the container's output (and input, with -i) and return its exit
        /// code.
        #[arg(short, long)]
        attach: bool,
        /// Attach the container's input (it must have been created with -i).
        #[arg(short, long)]
        interactive: bool,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Restart containers: stop (SIGTERM, SIGKILL after the grace time), then start.
    Restart {
        /// Seconds to wait before SIGKILL (default: the container's --stop-timeout,
        /// else 10).
        #[arg(short, long)]
        time: Option<u64>,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// List containers.
    Ps {
        /// Show all containers (default shows just running).
        #[arg(short, long)]
        all: bool,
        /// Only display container IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Filter output based on conditions provided (id, name, status, exited, label,
        /// ancestor, before, since, volume, network, isolation).
        #[arg(short, long = "filter", value_name = "FILTER")]
        filter: Vec<String>,
        /// Show n last created containers (includes all states).
        #[arg(short = 'n', long, value_name = "INT")]
        last: Option<i64>,
        /// Show the latest created container (includes all states).
        #[arg(short, long)]
        latest: bool,
        /// Don't truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Display total file sizes.
        #[arg(short, long)]
        size: bool,
        /// Print with a Go template, `table TEMPLATE`, `table` or `json`.
        #[arg(long)]
        format: Option<String>,
    },
    /// Show a container's output.
    Logs {
        /// Follow log output.
        #[arg(short, long)]
        follow: bool,
        /// Number of lines to show from the end of the logs ("all" or a number).
        #[arg(short = 'n', long, value_name = "string", default_value = "all")]
        tail: String,
        /// Show logs since a timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g.
        /// "42m" for 42 minutes).
        #[arg(long, value_name = "string")]
        since: Option<String>,
        /// Show logs before a timestamp (e.g. "2013-01-02T13:23:37Z") or relative (e.g.
        /// "42m" for 42 minutes).
        #[arg(long, value_name = "string")]
        until: Option<String>,
        /// Show timestamps.
        #[arg(short, long)]
        timestamps: bool,
        /// The container.
        container: String,
    },
    /// Stop containers: SIGTERM, then SIGKILL after the grace time.
    Stop {
        /// Seconds to wait before SIGKILL (default: the container's --stop-timeout,
        /// else 10).
        #[arg(short, long)]
        time: Option<u64>,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers.
    Kill {
        /// Signal name or number.
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Display a live stream of container(s) resource usage statistics.
    Stats {
        /// Show all containers (default shows just running).
        #[arg(short, long)]
        all: bool,
        /// Disable streaming stats and only pull the first result.
        #[arg(long)]
        no_stream: bool,
        /// Do not truncate output.
        #[arg(long)]
        no_trunc: bool,
        /// Print with a Go template, `table TEMPLATE`, `table` or `json`.
        #[arg(long)]
        format: Option<String>,
        /// The containers (default: every running one).
        containers: Vec<String>,
    },
    /// Pause all processes within one or more containers.
    Pause {
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Unpause all processes within one or more containers.
    Unpause {
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Display the running processes of a container.
    Top {
        /// The container.
        container: String,
        /// `ps` options: not taken (Arca lists the processes itself, as `ps -ef`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_options: Vec<String>,
    },
    /// Rename a container.
    Rename {
        /// The container (name, ID or ID prefix).
        container: String,
        /// Its new name.
        new_name: String,
    },
    /// Remove containers.
    Rm {
        /// Kill running ones first.
        #[arg(short, long)]
        force: bool,
        /// Remove their anonymous volumes too.
        #[arg(short, long)]
        volumes: bool,
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Wait for containers to exit and print their exit codes.
    Wait {
        /// The containers.
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command in a running container.
    Exec {
        /// Detached mode: run the command in the background (its output is discarded).
        #[arg(short, long)]
        detach: bool,
        /// Give extended privileges to the command (every capability; the container's
        /// seccomp filter stays, as Docker's).
        #[arg(long)]
        privileged: bool,
        /// Keep stdin open.
        #[arg(short, long)]
        interactive: bool,
        /// Allocate a terminal.
        #[arg(short, long)]
        tty: bool,
        /// Environment variables.
        #[arg(short, long = "env")]
        env: Vec<String>,
        /// Working directory.
        #[arg(short, long)]
        workdir: Option<String>,
        /// User.
        #[arg(short, long)]
        user: Option<String>,
        /// The container.
        container: String,
        /// The command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Build an image from a Dockerfile, every RUN step in a microVM (or, with
    /// --isolation=process, a host container).
    Build {
        /// Name and optionally a tag (`name:tag`); repeatable.
        #[arg(short, long = "tag")]
        tag: Vec<String>,
        /// The Dockerfile (default: CONTEXT/Dockerfile; `-` reads it from stdin).
        #[arg(short, long)]
        file: Option<String>,
        /// Build-time variables (`K=V`, or `K` to take this environment's value).
        #[arg(long = "build-arg")]
        build_arg: Vec<String>,
        /// The stage to build (default: the last).
        #[arg(long)]
        target: Option<String>,
        /// Do not use the build cache.
        #[arg(long)]
        no_cache: bool,
        /// Pull base images even when the store has them.
        #[arg(long)]
        pull: bool,
        /// Where RUN steps run: each in its own microVM (vm) or in a host container.
        #[arg(long, value_enum, default_value = "vm")]
        isolation: Isolation,
        /// The network of RUN steps: default (the default bridge), none, or host
        /// (process isolation only).
        #[arg(long)]
        network: Option<String>,
        /// Progress output: auto, plain or tty (arca writes plain lines for all three).
        #[arg(long, default_value = "auto")]
        progress: String,
        /// Print nothing but the image ID (on stdout); a failure's output still shows.
        #[arg(short, long)]
        quiet: bool,
        /// Write the image ID to this file.
        #[arg(long)]
        iidfile: Option<PathBuf>,
        /// The platform: linux/amd64 is the only one.
        #[arg(long)]
        platform: Option<String>,
        /// Remove intermediate containers (always done; accepted for Docker's scripts).
        #[arg(long, num_args = 0..=1, default_missing_value = "true")]
        rm: Option<String>,
        /// Remove intermediate containers even after a failure (always done).
        #[arg(long)]
        force_rm: bool,
        /// The build context: a directory, or `-` for a Dockerfile on stdin and no
        /// context.
        context: String,
    },
    /// Inspect changes to files or directories on a container's filesystem.
    Diff {
        /// The container.
        container: String,
    },
    /// Copy files between a running container and the host (`-` for a tar stream).
    Cp {
        /// Archive mode: what is copied into the container keeps its uid and gid.
        #[arg(short = 'a', long)]
        archive: bool,
        /// Always follow a symlink named in SRC_PATH.
        #[arg(short = 'L', long)]
        follow_link: bool,
        /// No summary on stderr (there is none without a terminal on stdout anyway).
        #[arg(short, long)]
        quiet: bool,
        /// CONTAINER:SRC_PATH, or a host path, or `-` (a tar on stdin).
        src: String,
        /// CONTAINER:DEST_PATH, or a host path, or `-` (a tar on stdout).
        dest: String,
    },
    /// Define and run multi-container applications (Compose files).
    Compose(compose_cli::ComposeArgs),
    /// Manage volumes.
    Volume {
        #[command(subcommand)]
        command: VolumeCmd,
    },
    /// Manage networks.
    Network {
        #[command(subcommand)]
        command: NetworkCmd,
    },
    /// Manage containers (`arca container ls|run|rm|...` are `arca ps|run|rm|...`).
    Container {
        #[command(subcommand)]
        command: ContainerCmd,
    },
    /// Manage images (`arca image ls|rm|pull|...` are `arca images|rmi|pull|...`).
    Image {
        #[command(subcommand)]
        command: ImageCmd,
    },
    /// Manage Arca: disk usage, removing unused data.
    System {
        #[command(subcommand)]
        command: SystemCmd,
    },
    /// Generate the shell completion script (bash, zsh, fish, elvish or powershell).
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Attach to a detached container's terminal or output (and input, if it was run
    /// with -i); Ctrl-P Ctrl-Q detaches from a terminal.
    Attach {
        /// The container.
        container: String,
    },
    /// List a container's published ports.
    Port {
        /// The container.
        container: String,
    },
    /// Internal: takes down networks no container uses, after a while.
    #[command(name = "__network-gc", hide = true)]
    NetworkGc {
        /// The bridge of the network the last container left.
        bridge: String,
    },
    /// Internal: supervises a detached container.
    #[command(name = "__monitor", hide = true)]
    Monitor {
        /// The container.
        id: String,
    },
    /// Internal: serves a network's names on its gateway while it has containers.
    #[command(name = "__dns", hide = true)]
    Dns {
        /// The network.
        network: String,
    },
}

#[derive(clap::Subcommand, Debug)]
enum VolumeCmd {
    /// Create a volume (a name is made up when none is given); prints its name.
    Create {
        /// Volume driver: local only.
        #[arg(short, long)]
        driver: Option<String>,
        /// Driver options (refused: Arca's volumes are directories).
        #[arg(short, long = "opt")]
        opt: Vec<String>,
        /// Metadata: KEY=VALUE.
        #[arg(long)]
        label: Vec<String>,
        /// Its name.
        name: Option<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        /// Filter: dangling=true|false, name=TEXT, label=KEY[=VALUE].
        #[arg(short, long)]
        filter: Vec<String>,
        /// Print with a Go template, `table TEMPLATE`, `table` or `json`.
        #[arg(long)]
        format: Option<String>,
    },
    /// Show volumes as JSON.
    Inspect {
        /// The volumes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove volumes (refused while a container uses them).
    #[command(alias = "remove")]
    Rm {
        /// No error for a volume that does not exist.
        #[arg(short, long)]
        force: bool,
        /// The volumes.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove the anonymous volumes no container uses (all unused ones with -a).
    Prune {
        /// Named volumes too.
        #[arg(short, long)]
        all: bool,
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
enum NetworkCmd {
    /// Create a network (a bridge with its own subnet; containers on it reach each
    /// other by name).
    Create {
        /// Subnet in CIDR form (default: the next free /24 of 10.89.0.0/16).
        #[arg(long)]
        subnet: Option<String>,
        /// Metadata: KEY=VALUE.
        #[arg(long)]
        label: Vec<String>,
        /// Its name.
        name: String,
    },
    /// List networks.
    #[command(alias = "list")]
    Ls {
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
        /// Print with a Go template, `table TEMPLATE`, `table` or `json`.
        #[arg(long)]
        format: Option<String>,
    },
    /// Remove networks (refused while containers use them).
    #[command(alias = "remove")]
    Rm {
        /// The networks.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Show networks as JSON.
    Inspect {
        /// The networks.
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove all unused networks.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ContainerCmd {
    /// Remove all stopped containers.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
        /// Provide filter values (e.g. "until=<timestamp>", "label=key=value").
        #[arg(long = "filter", value_name = "FILTER")]
        filter: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
enum ImageCmd {
    /// Remove unused images.
    Prune {
        /// Remove all unused images, not just dangling ones.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum SystemCmd {
    /// Show Arca disk usage.
    Df,
    /// Remove unused data.
    Prune {
        /// Remove all unused images, not just dangling ones.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
        /// Prune anonymous volumes.
        #[arg(long)]
        volumes: bool,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Where the container runs.
    #[arg(long, value_enum, default_value = "vm")]
    isolation: Isolation,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the container name.
    #[arg(short, long)]
    detach: bool,
    /// Give the container a terminal.
    #[arg(short, long)]
    tty: bool,
    /// Keep stdin open.
    #[arg(short, long)]
    interactive: bool,
    /// Container name.
    #[arg(long)]
    name: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy it from here).
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file")]
    env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User (name|uid[:group|gid]).
    #[arg(short, long)]
    user: Option<String>,
    /// Override the image's ENTRYPOINT.
    #[arg(long)]
    entrypoint: Option<String>,
    /// Container hostname.
    #[arg(long)]
    hostname: Option<String>,
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short, long)]
    memory: Option<String>,
    /// Number of CPUs (e.g. 0.5, 2).
    #[arg(long)]
    cpus: Option<f64>,
    /// Run an init as PID 1 that forwards signals and reaps processes.
    #[arg(long)]
    init: bool,
    /// Network: a network's name, `none` (loopback only), or `host` (process isolation
    /// only); the default network `bridge` otherwise.
    #[arg(long, alias = "net")]
    network: Option<String>,
    /// Add a network-scoped alias for the container (a user network's embedded DNS
    /// answers it).
    #[arg(long = "network-alias", alias = "net-alias")]
    network_alias: Vec<String>,
    /// Publish a container port: [IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp] (ports may
    /// be ranges: 8000-8010:80-90).
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// Publish every exposed port (the image's EXPOSE and --expose) to a free host port.
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Expose a port or a range of ports (PORT[/PROTO], FROM-TO[/PROTO]): published by -P.
    #[arg(long)]
    expose: Vec<String>,
    /// Log rotation, as Docker's local driver: max-size=SIZE (default 20m), max-file=N
    /// (default 5), per output stream.
    #[arg(long = "log-opt")]
    log_opt: Vec<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    read_only: bool,
    /// Bind a host path or mount a volume: [SOURCE:]DEST[:OPTIONS] (SOURCE a host path
    /// or a volume name; DEST alone is an anonymous volume; OPTIONS ro, rw, nocopy).
    #[arg(short = 'v', long = "volume")]
    volume: Vec<String>,
    /// Attach a filesystem mount: type=bind|volume|tmpfs,source=..,target=..[,readonly].
    #[arg(long)]
    mount: Vec<String>,
    /// Mount the volumes and bind mounts of another container: NAME[:ro|rw].
    #[arg(long = "volumes-from")]
    volumes_from: Vec<String>,
    /// Mount a tmpfs: PATH[:OPTIONS] (rw, ro, size=SIZE, mode=OCTAL, exec, noexec; noexec
    /// by default, as Docker).
    #[arg(long)]
    tmpfs: Vec<String>,
    /// Size of /dev/shm (64m by default, as Docker's).
    #[arg(long = "shm-size", value_name = "bytes")]
    shm_size: Option<String>,
    /// Storage driver options: size=SIZE, the writable layer's size (microVMs only: a
    /// sparse disk, 10g by default; with process isolation the layer is a directory on
    /// the state directory's filesystem, and size= is refused).
    #[arg(long = "storage-opt")]
    storage_opt: Vec<String>,
    /// Add Linux capabilities (names with or without CAP_, or ALL).
    #[arg(long = "cap-add")]
    cap_add: Vec<String>,
    /// Drop Linux capabilities (names with or without CAP_, or ALL).
    #[arg(long = "cap-drop")]
    cap_drop: Vec<String>,
    /// Security options: seccomp=unconfined|PROFILE.json, no-new-privileges[=true|false]
    /// (apparmor=unconfined and label=disable are accepted; Arca applies neither).
    #[arg(long = "security-opt")]
    security_opt: Vec<String>,
    /// Every capability, no seccomp filter, /proc and /sys unmasked. In a microVM this
    /// stays inside the container's own VM; with process isolation it is refused unless
    /// the operator sets ARCA_ALLOW_PRIVILEGED_PROCESS=1.
    #[arg(long)]
    privileged: bool,
    /// Add a custom host-to-IP mapping (NAME:IP).
    #[arg(long = "add-host")]
    add_host: Vec<String>,
    /// Set custom DNS servers (IPv4).
    #[arg(long)]
    dns: Vec<std::net::Ipv4Addr>,
    /// Add additional groups to join.
    #[arg(long = "group-add")]
    group_add: Vec<String>,
    /// Ulimit options (NAME=SOFT[:HARD]).
    #[arg(long)]
    ulimit: Vec<String>,
    /// Namespaced kernel parameters (NAME=VALUE): kernel.msg*, kernel.sem, kernel.shm*,
    /// fs.mqueue.*, and net.* unless --network host.
    #[arg(long)]
    sysctl: Vec<String>,
    /// Set metadata on the container (KEY[=VALUE]).
    #[arg(short, long)]
    label: Vec<String>,
    /// Signal to stop the container.
    #[arg(long = "stop-signal")]
    stop_signal: Option<String>,
    /// Timeout (in seconds) to stop the container.
    #[arg(long = "stop-timeout")]
    stop_timeout: Option<u64>,
    /// Write the container ID to the file.
    #[arg(long)]
    cidfile: Option<PathBuf>,
    /// Pull image before running: always, missing or never.
    #[arg(long, value_parser = ["always", "missing", "never"])]
    pull: Option<String>,
    /// Set platform: linux/amd64 only (Arca runs x86_64 containers).
    #[arg(long)]
    platform: Option<String>,
    /// Proxy received signals to the process (a foreground run).
    #[arg(long = "sig-proxy", default_value_t = true, action = clap::ArgAction::Set)]
    sig_proxy: bool,
    /// Attach to STDIN, STDOUT or STDERR (a foreground run; default stdout and stderr).
    #[arg(short = 'a', long = "attach", value_parser = parse_attach_stream)]
    attach: Vec<String>,
    /// Restart policy: no, on-failure[:MAX-RETRIES], always or unless-stopped.
    #[arg(long, default_value = "no")]
    restart: String,
    /// Tune the container's pids limit (-1 or 0: unlimited; default 4096 with process
    /// isolation, none in a microVM).
    #[arg(long = "pids-limit", allow_hyphen_values = true)]
    pids_limit: Option<i64>,
    /// Command to run to check health (run with the container's shell, /bin/sh -c).
    #[arg(long = "health-cmd")]
    health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h) (default 30s).
    #[arg(long = "health-interval", allow_hyphen_values = true)]
    health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h) (default 30s).
    #[arg(long = "health-timeout", allow_hyphen_values = true)]
    health_timeout: Option<String>,
    /// Start period for the container to initialize before counting retries towards
    /// unstable (ms|s|m|h) (default 0s).
    #[arg(long = "health-start-period", allow_hyphen_values = true)]
    health_start_period: Option<String>,
    /// Time between running the check during the start period (ms|s|m|h) (default 5s).
    #[arg(long = "health-start-interval", allow_hyphen_values = true)]
    health_start_interval: Option<String>,
    /// Consecutive failures needed to report unhealthy (default 3).
    #[arg(long = "health-retries", allow_hyphen_values = true)]
    health_retries: Option<i64>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long = "no-healthcheck")]
    no_healthcheck: bool,
    /// Arca only: keep the microVM's serial console in console.log in the container's
    /// directory (capped at 1 MiB), for debugging a guest; off by default.
    #[arg(long)]
    guest_console: bool,
    /// Arca only: boot the microVM cold instead of restoring the warm-start template
    /// (see docs/architecture.md, "Warm starts"; $ARCA_SNAPSHOTS=0 does it for every run).
    #[arg(long)]
    no_snapshot: bool,
    /// The image.
    image: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// Docker's memory syntax: a number with an optional b, k, m or g suffix.
fn parse_memory(text: &str) -> Result<u64, String> {
    arca_runtime::parse_size(text)
        .ok_or_else(|| format!("invalid memory size {text:?} (use e.g. 64m or 1g)"))
}

fn env_file(path: &PathBuf) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read env file {}: {e}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .collect())
}

/// What `run` and `create` were asked, checked.
fn run_options(a: RunArgs) -> Result<RunOptions, String> {
    let mut env = Vec::new();
    for f in &a.env_file {
        env.extend(env_file(f)?);
    }
    env.extend(a.env.iter().cloned());
    // `-e KEY` takes KEY's value from this shell now (or is dropped if it has none), so
    // every later start and exec of the container sees what its first run saw.
    let env: Vec<String> = env
        .into_iter()
        .filter_map(|e| match e.split_once('=') {
            Some(_) => Some(e),
            None => std::env::var(&e).ok().map(|v| format!("{e}={v}")),
        })
        .collect();
    let mut tmpfs = a.tmpfs.clone();
    if let Some(size) = &a.shm_size {
        let bytes = arca_runtime::parse_size(size)
            .filter(|&b| b > 0)
            .ok_or_else(|| format!("invalid argument {size:?} for \"--shm-size\" flag: a positive size such as 128m"))?;
        // A tmpfs of that size over the agent's /dev/shm, with Docker's options for it
        // (one the caller mounts there with --tmpfs wins, as with Docker).
        if !tmpfs
            .iter()
            .any(|t| t.split(':').next() == Some("/dev/shm"))
        {
            tmpfs.push(format!("/dev/shm:size={bytes},mode=1777"));
        }
    }
    let mounts = arca_runtime::storage::parse_mount_flags(&a.volume, &a.mount, &tmpfs)
        .map_err(|e| e.to_string())?;
    let storage_size =
        arca_runtime::storage::parse_storage_opts(&a.storage_opt).map_err(|e| e.to_string())?;
    if storage_size.is_some() && a.isolation == Isolation::Process {
        return Err("--storage-opt size= needs --isolation=vm: with process isolation the writable layer is a directory on the state directory's filesystem, without a quota".into());
    }
    let security = arca_runtime::container::config::security(
        &arca_runtime::container::config::SecurityFlags {
            cap_add: a.cap_add,
            cap_drop: a.cap_drop,
            security_opt: a.security_opt,
            privileged: a.privileged,
        },
        a.isolation,
    )
    .map_err(|e| e.to_string())?;
    let restart = RestartPolicy::parse(&a.restart).map_err(|e| e.to_string())?;
    let healthcheck = arca_runtime::container::health::HealthFlags {
        cmd: a.health_cmd,
        interval: a.health_interval,
        timeout: a.health_timeout,
        start_period: a.health_start_period,
        start_interval: a.health_start_interval,
        retries: a.health_retries,
        none: a.no_healthcheck,
    }
    .parse()?;
    if let Some(p) = a.platform.as_deref()
        && !matches!(
            p,
            "linux/amd64" | "linux/x86_64" | "amd64" | "x86_64" | "linux"
        )
    {
        return Err(format!(
            "--platform {p} is not supported: Arca runs linux/amd64 containers only"
        ));
    }
    if !a.network_alias.is_empty()
        && matches!(
            a.network.as_deref(),
            None | Some(arca_runtime::network::DEFAULT_NETWORK | "none" | "host" | "default")
        )
    {
        return Err(
            "network-scoped alias is supported only for containers in user defined networks".into(),
        );
    }
    if let Some(bad) = a
        .network_alias
        .iter()
        .find(|n| !arca_protocol::valid_host_name(n))
    {
        return Err(format!(
            "invalid network alias {bad:?}: letters, digits, '-', '_' and '.', at most 253 bytes"
        ));
    }
    if a.rm && restart != RestartPolicy::No {
        return Err("Conflicting options: --restart and --rm".into());
    }
    if a.detach && !a.attach.is_empty() {
        return Err("Conflicting options: -a and -d".into());
    }
    let opts = RunOptions {
        healthcheck,
        security,
        pids_limit: a.pids_limit,
        restart,
        add_hosts: a
            .add_host
            .iter()
            .map(|h| config::parse_add_host(h))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
        dns: a.dns,
        group_add: a.group_add,
        ulimits: a
            .ulimit
            .iter()
            .map(|u| config::parse_ulimit(u))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
        sysctls: a
            .sysctl
            .iter()
            .map(|s| config::parse_sysctl(s, a.network.as_deref()))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
        labels: arca_runtime::parse_labels(&a.label),
        stop_signal: match a.stop_signal {
            Some(s) => {
                lifecycle::parse_signal(&s).map_err(|e| e.to_string())?;
                Some(s)
            }
            None => None,
        },
        stop_timeout: a.stop_timeout,
        cidfile: a.cidfile,
        pull: a.pull,
        no_sig_proxy: !a.sig_proxy,
        attach: a.attach,
        read_only: a.read_only,
        mounts,
        volumes_from: a.volumes_from,
        storage_size,
        image: a.image,
        args: a.command,
        entrypoint: a.entrypoint,
        env,
        workdir: a.workdir,
        user: a.user,
        hostname: a.hostname,
        memory: a.memory.as_deref().map(parse_memory).transpose()?,
        log: LogOptions::parse(&a.log_opt).map_err(|e| e.to_string())?,
        guest_console: a.guest_console,
        no_snapshot: a.no_snapshot,
        cpus: a.cpus,
        init: a.init,
        interactive: a.interactive,
        tty: a.tty,
        isolation: a.isolation,
        name: a.name,
        detach: a.detach,
        rm: a.rm,
        // Bridges and links need root: a non-root user's containers get
        // loopback only unless they ask (-p works either way).
        network: a
            .network
            .or_else(|| (!rustix::process::geteuid().is_root()).then(|| "none".to_string())),
        publish: a
            .publish
            .iter()
            .map(|p| arca_runtime::ports::parse(p))
            .collect::<Result<Vec<_>, _>>()?
            .concat(),
        network_aliases: a.network_alias,
        publish_all: a.publish_all,
        expose: {
            for e in &a.expose {
                arca_runtime::ports::expose_keys(e, Some(1024))
                    .map_err(|why| format!("Invalid --expose {e:?}: {why}"))?;
            }
            a.expose
        },
    };
    Ok(opts)
}

/// Docker's management commands that are another command of ours: `container ls`,
/// `image rm`, ... (`container prune`, `image prune` and `system` are commands of their
/// own). Rewrites the arguments to the command they name.
fn docker_aliases(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    // The command is the first argument that is not a global flag (or its value).
    let mut i = 1;
    while i < args.len() {
        match args[i].to_str() {
            Some("--state-dir") => i += 2,
            Some(a) if a.starts_with('-') => i += 1,
            _ => break,
        }
    }
    let (Some(group), Some(sub)) = (
        args.get(i).and_then(|a| a.to_str()),
        args.get(i + 1).and_then(|a| a.to_str()),
    ) else {
        return args;
    };
    // `inspect` of one kind only.
    if sub == "inspect" && matches!(group, "container" | "image") {
        let kind = std::ffi::OsString::from(group);
        args.splice(i..i + 2, ["inspect".into(), "--type".into(), kind]);
        return args;
    }
    let target = match (group, sub) {
        ("container", "ls" | "list" | "ps") => Some("ps"),
        (
            "container",
            c @ ("attach" | "create" | "cp" | "exec" | "kill" | "logs" | "pause" | "port"
            | "rename" | "restart" | "rm" | "run" | "start" | "stats" | "stop" | "unpause"
            | "wait"),
        ) => Some(c),
        ("container", "remove") => Some("rm"),
        ("image", "ls" | "list") => Some("images"),
        ("image", "rm" | "remove") => Some("rmi"),
        ("image", c @ ("history" | "load" | "pull" | "push" | "save" | "tag")) => Some(c),
        _ => None,
    };
    if let Some(t) = target {
        args.splice(i..i + 2, [std::ffi::OsString::from(t)]);
    }
    args
}

/// `run -a STREAM`: Docker's names, any case.
fn parse_attach_stream(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    match lower.as_str() {
        "stdin" | "stdout" | "stderr" => Ok(lower),
        _ => Err("valid streams are STDIN, STDOUT and STDERR".into()),
    }
}

/// A reader that hung up on our output (`arca images | head -n 1`) ends arca quietly, as
/// SIGPIPE ends other tools (exit 141), instead of with a panic about a broken pipe;
/// every other panic is reported as usual.
fn quiet_on_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        // std's println! and clap_complete's writer both panic so on EPIPE.
        if message.contains("Broken pipe") || message.contains("BrokenPipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() -> ExitCode {
    quiet_on_broken_pipe();
    let cli = match Cli::try_parse_from(docker_aliases(std::env::args_os().collect())) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 125 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // Files 0600 and directories 0700: nothing arca makes is for other local users.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let state = match cli.state_dir.clone().map_or_else(state::state_dir, Ok) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("arca: {e}");
            return ExitCode::from(125);
        }
    };
    if let Err(e) = state::secure(&state) {
        eprintln!("arca: {}", chain(&e));
        return ExitCode::from(125);
    }
    let result: Result<i32, String> = (|| match cli.command {
        Cmd::Load { input } => {
            let store = Store::open(&state).map_err(|e| e.to_string())?;
            for name in store.load(&input).map_err(|e| chain(&e))? {
                println!("Loaded image: {name}");
            }
            Ok(0)
        }
        Cmd::Pull {
            insecure,
            quiet,
            reference,
        } => {
            let store = Store::open(&state).map_err(|e| e.to_string())?;
            let tty = rustix::termios::isatty(std::io::stderr());
            let (name, digest) =
                arca_runtime::image::pull::pull(&store, &reference, insecure, tty && !quiet)
                    .map_err(|e| chain(&e))?;
            if !quiet {
                println!("Digest: {digest}");
                println!("Status: Downloaded image for {name}");
            }
            println!("{name}");
            Ok(0)
        }
        Cmd::Events {
            filter,
            format,
            since,
            until,
        } => Ok(events(&state, &filter, format, since, until)),
        Cmd::Login {
            username,
            password,
            password_stdin,
            insecure,
            server,
        } => Ok(login(username, password, password_stdin, insecure, server)),
        Cmd::Logout { server } => Ok(logout(server)),
        Cmd::Push {
            all_tags,
            quiet,
            insecure,
            name,
        } => {
            use arca_runtime::image::push;
            let store = Store::open(&state).map_err(|e| e.to_string())?;
            let plan = match push::plan(&store, &name, all_tags) {
                Ok(p) => p,
                Err(e) => return Ok(refused(&e)),
            };
            if plan.default_tag && !quiet {
                println!("Using default tag: latest");
            }
            if !quiet {
                println!("The push refers to repository [{}]", plan.repository);
            }
            for tag in &plan.tags {
                let mut out = |line: &str| {
                    if !quiet {
                        println!("{line}");
                    }
                };
                if let Err(e) = push::push(&store, tag, insecure, &mut out) {
                    return Ok(refused(&e));
                }
            }
            if quiet {
                println!("{}", plan.reference);
            }
            Ok(0)
        }
        Cmd::Ps {
            all,
            quiet,
            filter,
            last,
            latest,
            no_trunc,
            size,
            format,
        } => {
            // What crashed containers left behind goes now.
            lifecycle::reap_crashed(&state);
            network::reconcile(&state);
            let opts = view::PsOptions {
                all,
                quiet,
                // Docker: -n below 0 (its default -1) shows all, as if absent.
                last: if latest {
                    Some(1)
                } else {
                    last.and_then(|n| usize::try_from(n).ok())
                },
                no_trunc,
                size,
                filters: filter,
                format: format_unless_quiet(format, quiet),
            };
            match view::ps(&state, &opts) {
                Ok(text) => print_formatted(text),
                Err(e) => Ok(refused(&e)),
            }
        }
        Cmd::Port { container } => {
            let (_, rec) = find(&state, &container).map_err(|e| chain(&e))?;
            for p in &rec.ports {
                println!("{p}");
            }
            Ok(0)
        }
        Cmd::Network { command } => network_command(&state, command),
        Cmd::Container {
            command: ContainerCmd::Prune { force, filter },
        } => {
            if !force && !confirm("WARNING! This will remove all stopped containers.") {
                return Ok(0);
            }
            Ok(report_prune(
                "Containers",
                lifecycle::prune(&state, &filter),
            ))
        }
        Cmd::Image {
            command: ImageCmd::Prune { all, force },
        } => {
            let what = if all {
                "WARNING! This will remove all images without at least one container associated to them."
            } else {
                "WARNING! This will remove all dangling images."
            };
            if !force && !confirm(what) {
                return Ok(0);
            }
            let store = Store::open(&state).map_err(|e| e.to_string())?;
            Ok(report_prune("Images", store.prune(all)))
        }
        Cmd::System {
            command: SystemCmd::Df,
        } => match arca_runtime::system::df(&state) {
            Ok(rows) => {
                emit(&arca_runtime::system::df_table(&rows));
                Ok(0)
            }
            Err(e) => Ok(refused(&e)),
        },
        Cmd::System {
            command:
                SystemCmd::Prune {
                    all,
                    force,
                    volumes,
                },
        } => {
            let mut what = vec![
                "all stopped containers",
                "all networks not used by at least one container",
            ];
            if volumes {
                what.push("all anonymous volumes not used by at least one container");
            }
            what.push(if all {
                "all images without at least one container associated to them"
            } else {
                "all dangling images"
            });
            let list: String = what.iter().map(|w| format!("\n  - {w}")).collect();
            if !force && !confirm(&format!("WARNING! This will remove:{list}\n")) {
                return Ok(0);
            }
            match arca_runtime::system::prune(&state, all, volumes) {
                Ok(p) => {
                    print_deleted("Containers", &p.containers);
                    print_deleted("Networks", &p.networks);
                    print_deleted("Volumes", &p.volumes);
                    print_deleted("Images", &p.images);
                    println!(
                        "Total reclaimed space: {}",
                        arca_runtime::human_size(p.freed)
                    );
                    Ok(0)
                }
                Err(e) => Ok(refused(&e)),
            }
        }
        Cmd::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "arca", &mut std::io::stdout());
            Ok(0)
        }
        Cmd::Volume { command } => volume_command(&state, command),
        Cmd::Compose(args) => Ok(compose_cli::compose(&state, args)),
        Cmd::Attach { container } => {
            arca_runtime::attach::attach(&state, &container).map_err(|e| chain(&e))
        }
        Cmd::Logs {
            follow,
            tail,
            since,
            until,
            timestamps,
            container,
        } => {
            let Some((since, until)) = time_bounds(since, until) else {
                return Ok(1);
            };
            // Docker: "all", or a count (a negative one means all).
            let tail = match tail.as_str() {
                "all" | "" => None,
                n => match n.parse::<i64>() {
                    Ok(n) => usize::try_from(n).ok(),
                    Err(_) => {
                        eprintln!(
                            "arca: invalid value for \"tail\": {n:?}: use \"all\" or a number of lines"
                        );
                        return Ok(1);
                    }
                },
            };
            let opts = view::LogsOptions {
                follow,
                tail,
                since,
                until,
                timestamps,
            };
            Ok(view::logs(&state, &container, &opts).unwrap_or_else(|e| refused(&e)))
        }
        Cmd::Stop {
            time,
            containers: names,
        } => each(&names, |n| {
            lifecycle::stop(&state, n, time.map(std::time::Duration::from_secs))
        }),
        Cmd::Kill {
            signal,
            containers: names,
        } => {
            let sig = lifecycle::parse_signal(&signal).map_err(|e| chain(&e))?;
            each(&names, |n| lifecycle::kill(&state, n, sig))
        }
        Cmd::Stats {
            all,
            no_stream,
            no_trunc,
            format,
            containers,
        } => {
            let opts = arca_runtime::stats::StatsOptions {
                all,
                no_stream,
                no_trunc,
                format,
                containers,
            };
            match arca_runtime::stats::stats(&state, &opts) {
                Ok(Ok(())) => Ok(0),
                Ok(Err(e)) => {
                    eprintln!("arca: {}", e.docker_message());
                    Ok(1)
                }
                Err(e) => Ok(refused(&e)),
            }
        }
        Cmd::Pause { containers } => each(&containers, |n| lifecycle::pause(&state, n)),
        Cmd::Unpause { containers } => each(&containers, |n| lifecycle::unpause(&state, n)),
        Cmd::Top {
            container,
            ps_options,
        } => {
            if !ps_options.is_empty() {
                return Err(format!(
                    "top takes no ps options ({}): Arca lists the container's processes itself, as `ps -ef` shows them",
                    ps_options.join(" ")
                ));
            }
            match view::top(&state, &container) {
                Ok(text) => {
                    emit(&text);
                    Ok(0)
                }
                Err(e) => Ok(refused(&e)),
            }
        }
        Cmd::Rename {
            container,
            new_name,
        } => {
            Ok(lifecycle::rename(&state, &container, &new_name)
                .map_or_else(|e| refused(&e), |()| 0))
        }
        Cmd::Rm {
            force,
            volumes,
            containers: names,
        } => {
            let code = each(&names, |n| {
                let removed = lifecycle::rm(&state, n, force)?;
                if volumes {
                    volume::remove_anonymous(&state, &volume::anonymous_of(&removed.mounts));
                }
                Ok::<(), arca_runtime::RunError>(())
            });
            lifecycle::reap_crashed(&state);
            network::reconcile(&state);
            code
        }
        Cmd::Wait { containers: names } => {
            let mut failed = false;
            for n in &names {
                match lifecycle::wait(&state, n) {
                    Ok(code) => println!("{code}"),
                    Err(e) => {
                        eprintln!("arca: {}", chain(&e));
                        failed = true;
                    }
                }
            }
            Ok(if failed { 1 } else { 0 })
        }
        Cmd::Exec {
            detach,
            privileged,
            interactive,
            tty,
            env,
            workdir,
            user,
            container,
            command,
        } => {
            let process = arca_protocol::ProcessSpec {
                args: command,
                env,
                cwd: workdir,
                user,
                // Detached, nobody reads: no terminal (whose buffer would fill).
                stdin: interactive && !detach,
                terminal: tty && !detach,
                detached: detach,
                privileged,
                ..Default::default()
            };
            arca_runtime::exec::exec(&state, &container, process).map_err(|e| {
                let code = e.exit_code();
                if code != 125 {
                    eprintln!("arca: {}", chain(&e));
                    std::process::exit(code);
                }
                chain(&e)
            })
        }
        Cmd::Build {
            tag,
            file,
            build_arg,
            target,
            no_cache,
            pull,
            isolation,
            network,
            progress,
            quiet,
            iidfile,
            platform,
            rm,
            force_rm: _,
            context,
        } => {
            if !matches!(progress.as_str(), "auto" | "plain" | "tty" | "quiet") {
                return Err(format!(
                    "invalid --progress {progress:?}: auto, plain, tty or quiet"
                ));
            }
            if rm.as_deref().is_some_and(|v| v != "true") {
                return Err(
                    "--rm=false is not supported: arca build always removes its step containers"
                        .into(),
                );
            }
            if let Some(p) = platform.as_deref()
                && !matches!(
                    p,
                    "linux/amd64" | "linux/x86_64" | "amd64" | "x86_64" | "linux"
                )
            {
                return Err(format!(
                    "--platform {p} is not supported: arca builds linux/amd64 images only"
                ));
            }
            if network
                .as_deref()
                .is_some_and(|n| !matches!(n, "default" | "none" | "host"))
            {
                return Err(format!(
                    "--network {} is not supported by arca build: default, none or host",
                    network.as_deref().unwrap_or_default()
                ));
            }
            if network.as_deref() == Some("host") && isolation == Isolation::Vm {
                return Err("--network host is not possible with --isolation=vm: a microVM has its own network stack".into());
            }
            Ok(build(
                &state,
                arca_runtime::build::builder::BuildRequest {
                    file,
                    context,
                    opts: arca_runtime::build::builder::BuildOptions {
                        tags: tag,
                        build_args: build_arg,
                        target,
                        no_cache,
                        pull,
                        isolation,
                        // Bridges need root: a non-root user's steps get loopback only
                        // unless they ask.
                        network: network.or_else(|| {
                            (!rustix::process::geteuid().is_root()).then(|| "none".to_string())
                        }),
                        quiet: quiet || progress == "quiet",
                    },
                },
                iidfile,
            ))
        }
        Cmd::Diff { container } => match arca_runtime::cp::diff(&state, &container) {
            Ok(changes) => {
                let text: String = changes
                    .iter()
                    .map(|c| format!("{} {}\n", c.kind.letter(), c.path))
                    .collect();
                emit(&text);
                Ok(0)
            }
            // Docker's `diff` exits 1 on every error.
            Err(e) => {
                eprintln!("arca: {}", chain(&e));
                Ok(1)
            }
        },
        Cmd::Cp {
            archive,
            follow_link,
            quiet,
            src,
            dest,
        } => match arca_runtime::cp::cp(
            &state,
            &src,
            &dest,
            arca_runtime::cp::CpOptions {
                archive,
                follow_link,
                // Docker's: without a terminal on stdout, as if `-q`.
                quiet: quiet || !std::io::IsTerminal::is_terminal(&std::io::stdout()),
            },
        ) {
            Ok(()) => Ok(0),
            // Docker's `cp` exits 1 on every error.
            Err(e) => {
                eprintln!("arca: {}", chain(&e));
                Ok(1)
            }
        },
        Cmd::Monitor { id } => run::monitor(&state, &id).map_err(|e| chain(&e)),
        Cmd::Dns { network } => arca_runtime::dns::serve(&state, &network)
            .map(|()| 0)
            .map_err(|e| chain(&e)),
        Cmd::NetworkGc { bridge } => {
            network::gc(&state, &bridge);
            Ok(0)
        }
        Cmd::Save { output, images } => {
            let store = Store::open(&state).map_err(|e| e.to_string())?;
            store.save(&images, &output).map_err(|e| chain(&e))?;
            Ok(0)
        }
        Cmd::Tag { source, target } => {
            let store = Store::open(&state).map_err(|e| e.to_string())?;
            store.tag(&source, &target).map_err(|e| chain(&e))?;
            Ok(0)
        }
        Cmd::Inspect {
            format,
            kind,
            names,
        } => {
            let store = Store::open(&state).map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let mut failed = false;
            let (containers, images) = match kind.as_deref() {
                Some("container") => (true, false),
                Some("image") => (false, true),
                _ => (true, true),
            };
            for n in &names {
                let container = containers.then(|| find(&state, n).ok()).flatten();
                let image = (images && container.is_none())
                    .then(|| store.resolve(n).ok())
                    .flatten();
                if let Some((dir, rec)) = container {
                    let opts = RunOptions::load(&dir).ok();
                    let image = store.resolve(&rec.image_id).ok();
                    out.push(view::inspect(&dir, &rec, opts.as_ref(), image.as_ref()));
                } else if let Some(img) = image {
                    out.push(serde_json::json!({
                        "Id": format!("sha256:{}", img.id),
                        "RepoTags": img.tags,
                        "Created": img.config.created,
                        "Architecture": img.config.architecture,
                        "Os": img.config.os,
                        "Config": img.config.config,
                        "RootFS": {"Type": "layers", "Layers": img.config.rootfs.diff_ids},
                    }));
                } else {
                    eprintln!("arca: No such object: {n}");
                    failed = true;
                }
            }
            if let Some(f) = format {
                // As Docker's: the template runs on each object, a line each.
                let template = match arca_runtime::template::Template::parse(&f) {
                    Ok(t) => t,
                    Err(e) => return print_formatted(Err(e)),
                };
                let mut text = String::new();
                for o in &out {
                    match template.execute(o) {
                        Ok(line) => {
                            text.push_str(&line);
                            text.push('\n');
                        }
                        Err(e) => return print_formatted(Err(e)),
                    }
                }
                emit(&text);
                return Ok(if failed { 1 } else { 0 });
            }
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            Ok(if failed { 1 } else { 0 })
        }
        Cmd::Images {
            all,
            quiet,
            no_trunc,
            format,
            repository,
        } => {
            let format = format_unless_quiet(format, quiet);
            let store = Store::open(&state).map_err(|e| e.to_string())?;
            let mut images = store.list().map_err(|e| chain(&e))?;
            images.retain(|i| all || !i.tags.is_empty() || !store.is_intermediate(&i.id));
            if let Some(r) = &repository {
                // Docker: `NAME` matches every tag of it, `NAME:TAG` that tag.
                let full = arca_runtime::image::store::normalize_reference(r).ok();
                images.retain(|i| {
                    i.tags.iter().any(|t| {
                        Some(t) == full.as_ref()
                            || (!r.contains(':') && t.rsplit_once(':').is_some_and(|(n, _)| n == r))
                    })
                });
            }
            if quiet {
                let mut seen = std::collections::HashSet::new();
                for i in images {
                    let id = if no_trunc {
                        format!("sha256:{}", i.id)
                    } else {
                        i.id[..12].to_string()
                    };
                    if seen.insert(id.clone()) {
                        println!("{id}");
                    }
                }
                return Ok(0);
            }
            let at = arca_runtime::now();
            print_formatted(arca_runtime::image::view::images_formatted(
                &images,
                at,
                format.as_deref(),
                no_trunc,
            ))
        }
        Cmd::History {
            quiet,
            no_trunc,
            human,
            format,
            image,
        } => {
            if !human {
                return Err("history -H=false is not supported: Arca prints sizes and dates in human readable form only".into());
            }
            let format = format_unless_quiet(format, quiet);
            let store = Store::open(&state).map_err(|e| e.to_string())?;
            let img = match store.resolve(&image) {
                Ok(i) => i,
                Err(e) => return Ok(refused(&e)),
            };
            let rows = arca_runtime::image::view::history_rows(
                &img,
                &store.layer_sizes(&img.id),
                arca_runtime::now(),
                no_trunc,
            );
            if quiet {
                for r in &rows {
                    println!("{}", r["ID"].as_str().unwrap_or_default());
                }
                return Ok(0);
            }
            use arca_runtime::image::view::{HISTORY_TABLE, history_header};
            use arca_runtime::template::{ListFormat, render_list};
            print_formatted(render_list(
                &ListFormat::new(format.as_deref().unwrap_or(HISTORY_TABLE), HISTORY_TABLE),
                &history_header(),
                &rows,
            ))
        }
        Cmd::Rmi { images } => {
            let store = Store::open(&state).map_err(|e| e.to_string())?;
            let mut failed = false;
            for r in images {
                match store.remove(&r) {
                    Ok(Some(id)) => println!("Deleted: sha256:{id}"),
                    Ok(None) => println!("Untagged: {r}"),
                    Err(e) => {
                        eprintln!("arca: {}", chain(&e));
                        failed = true;
                    }
                }
            }
            Ok(if failed { 1 } else { 0 })
        }
        Cmd::Create(a) => {
            if a.detach {
                return Err(
                    "unknown flag: --detach (create never runs the container; use start)".into(),
                );
            }
            let opts = run_options(*a)?;
            let id = arca_runtime::run::create(&state, &opts).map_err(|e| chain(&e))?;
            println!("{id}");
            Ok(0)
        }
        Cmd::Start {
            attach,
            interactive,
            containers,
        } => {
            if (attach || interactive) && containers.len() > 1 {
                return Err("you cannot start and attach multiple containers at once".into());
            }
            if attach || interactive {
                return arca_runtime::run::start(&state, &containers[0], true).map_err(|e| {
                    let code = e.exit_code();
                    eprintln!("arca: {}", chain(&e));
                    std::process::exit(if code == 125 { 1 } else { code });
                });
            }
            each(&containers, |n| {
                arca_runtime::run::start(&state, n, false).map(|_| ())
            })
        }
        Cmd::Restart { time, containers } => each(&containers, |n| {
            arca_runtime::run::restart(&state, n, time.map(std::time::Duration::from_secs))
        }),
        Cmd::Run(a) => {
            let opts = run_options(*a)?;
            run(&state, &opts).map_err(|e| {
                // 126/127 keep their codes; the message still goes to stderr.
                let code = e.exit_code();
                if code != 125 {
                    eprintln!("arca: {}", chain(&e));
                    std::process::exit(code);
                }
                chain(&e)
            })
        }
    })();
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(255)),
        Err(msg) => {
            eprintln!("arca: {msg}");
            ExitCode::from(125)
        }
    }
}

/// `login`: Docker's flow. Without a user name or password, the stored credentials are
/// tried first, then asked for on the terminal; the credentials are checked against
/// the registry before they are stored. Exit 1 on any failure.
fn login(
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
    insecure: bool,
    server: Option<String>,
) -> i32 {
    use arca_runtime::image::{auth, registry};
    let fail = |msg: &str| {
        eprintln!("arca: {msg}");
        1
    };
    let name = auth::registry_name(server.as_deref().unwrap_or(""));
    if password.is_some() && password_stdin {
        return fail("--password and --password-stdin are mutually exclusive");
    }
    if password_stdin && username.is_none() {
        return fail("Must provide --username with --password-stdin");
    }
    if password.is_some() {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
    }
    let file = match auth::config_file() {
        Ok(f) => f,
        Err(e) => return refused(&e),
    };
    let loopback = registry::is_loopback(&name);
    let check = |creds: auth::Credentials| -> Result<auth::Credentials, registry::RegistryError> {
        registry::Registry::connect(&name, insecure || loopback, Some(creds.clone()))?
            .check_login()?;
        Ok(creds)
    };
    if username.is_none() && password.is_none() && !password_stdin {
        match auth::lookup(&file, &name) {
            Ok(Some(stored)) => {
                eprintln!("Authenticating with existing credentials...");
                if check(stored).is_ok() {
                    println!("Login Succeeded");
                    return 0;
                }
            }
            Ok(None) => {}
            Err(e) => return refused(&e),
        }
    }
    let Some(username) = username
        .or_else(|| arca_runtime::terminal::prompt("Username: ", false))
        .filter(|u| !u.is_empty())
    else {
        return fail("Cannot perform an interactive login from a non TTY device");
    };
    let password = if password_stdin {
        let mut text = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
            return fail(&format!("Cannot read the password from stdin: {e}"));
        }
        Some(text.trim_end_matches(['\n', '\r']).to_string())
    } else {
        password.or_else(|| arca_runtime::terminal::prompt("Password: ", true))
    };
    let Some(password) = password else {
        return fail("Cannot perform an interactive login from a non TTY device");
    };
    if password.is_empty() {
        return fail("Password is required");
    }
    match check(auth::Credentials { username, password }) {
        Ok(creds) => {
            match auth::store(&file, &name, &creds) {
                Err(e) => return refused(&e),
                Ok(Some(_helper)) => {}
                Ok(None) => eprintln!(
                    "WARNING! Your password will be stored unencrypted in {}.",
                    file.display()
                ),
            }
            println!("Login Succeeded");
            0
        }
        Err(e) => refused(&e),
    }
}

/// A `--since`/`--until` bound: seconds and nanoseconds since the epoch, if given.
type TimeBound = Option<(u64, u32)>;

/// `--since` and `--until` as `logs` and `events` take them (see
/// [`view::parse_log_time`]), both against one "now"; `None` after printing Docker's
/// error for a value that does not parse.
fn time_bounds(since: Option<String>, until: Option<String>) -> Option<(TimeBound, TimeBound)> {
    let at = std::time::SystemTime::now();
    let time = |flag: &str, v: Option<String>| match v {
        None => Some(None),
        Some(v) => {
            let t = view::parse_log_time(&v, at);
            if t.is_none() {
                eprintln!(
                    "arca: invalid value for \"{flag}\": failed to parse value as time or duration: \"{v}\""
                );
            }
            t.map(Some)
        }
    };
    Some((time("since", since)?, time("until", until)?))
}

/// `events`: past events with `--since`, then new ones as they come, until `--until`
/// (or forever). Docker's line, or `--format`.
fn events(
    state: &std::path::Path,
    filters: &[String],
    format: Option<String>,
    since: Option<String>,
    until: Option<String>,
) -> i32 {
    use arca_runtime::events;
    use std::io::Write;
    let Some(times) = time_bounds(since, until) else {
        return 1;
    };
    let nanos = |t: TimeBound| t.map(|(s, n)| u128::from(s) * 1_000_000_000 + u128::from(n));
    let bounds = [nanos(times.0), nanos(times.1)];
    let filters = match events::Filters::parse(filters) {
        Ok(f) => f,
        Err(e) => return refused(&e),
    };
    if let [Some(s), Some(u)] = bounds
        && s > u
    {
        eprintln!("arca: --since must be before --until");
        return 1;
    }
    // `json`: the JSON field names; a template: Docker's Go field names.
    let json = format.as_deref() == Some("json");
    let template = match format.as_deref() {
        None | Some("") | Some("json") => None,
        Some(f) => Some(f.to_string()),
    };
    let template = match template
        .map(|t| arca_runtime::template::Template::parse(&t))
        .transpose()
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("arca: {}", e.docker_message());
            return 1;
        }
    };
    let mut failed = None;
    let mut out = |e: &events::Event| -> bool {
        let line = match &template {
            None if json => serde_json::to_string(e).unwrap_or_default(),
            None => e.line(),
            Some(t) => match t.execute(&e.template_value()) {
                Ok(text) => text,
                Err(err) => {
                    failed = Some(err.docker_message());
                    return false;
                }
            },
        };
        // A reader that went away (`| head`) ends the stream quietly.
        writeln!(std::io::stdout(), "{line}").is_ok()
    };
    if let Err(e) = events::read(state, bounds[0], bounds[1], &filters, true, &mut out) {
        return refused(&e);
    }
    if let Some(msg) = failed {
        eprintln!("arca: {msg}");
        return 1;
    }
    0
}

/// `logout`: removes the registry's credentials (every entry naming it).
fn logout(server: Option<String>) -> i32 {
    use arca_runtime::image::auth;
    let name = auth::registry_name(server.as_deref().unwrap_or(""));
    let key = auth::auths_key(&name);
    let file = match auth::config_file() {
        Ok(f) => f,
        Err(e) => return refused(&e),
    };
    // Docker's: the same line whether or not there were credentials.
    match auth::erase(&file, &name) {
        Ok(_) => {
            println!("Removing login credentials for {key}");
            0
        }
        Err(e) => refused(&e),
    }
}

/// Runs `f` for each name, printing names done (as Docker) and errors; 1 if any failed.
/// Docker's prune prompt: `what`, then "Are you sure you want to continue? [y/N]"; true
/// for a yes on stdin.
fn confirm(what: &str) -> bool {
    eprint!("{what}\nAre you sure you want to continue? [y/N] ");
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    matches!(answer.trim(), "y" | "Y" | "yes")
}

/// A prune's report (what it removed, the space freed) or its error; the exit code.
fn report_prune<E: std::error::Error>(kind: &str, result: Result<(Vec<String>, u64), E>) -> i32 {
    match result {
        Ok((items, freed)) => {
            print_deleted(kind, &items);
            println!("Total reclaimed space: {}", arca_runtime::human_size(freed));
            0
        }
        Err(e) => refused(&e),
    }
}

/// A prune's `Deleted KIND:` section (nothing when nothing was removed).
fn print_deleted(kind: &str, items: &[String]) {
    if !items.is_empty() {
        println!("Deleted {kind}:");
        for i in items {
            println!("{i}");
        }
        println!();
    }
}

/// Prints an error of a command other than `run`/`create` and gives Docker's CLI exit
/// code for it, 1.
fn refused(e: &dyn std::error::Error) -> i32 {
    eprintln!("arca: {}", chain(e));
    1
}

fn each<E: std::error::Error>(
    names: &[String],
    f: impl Fn(&str) -> Result<(), E>,
) -> Result<i32, String> {
    let mut failed = false;
    for n in names {
        match f(n) {
            Ok(()) => println!("{n}"),
            Err(e) => {
                eprintln!("arca: {}", chain(&e));
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

/// `--format`, unless `-q` overrides it (with Docker's warning).
fn format_unless_quiet(format: Option<String>, quiet: bool) -> Option<String> {
    match format {
        Some(f) if !f.is_empty() && quiet => {
            eprintln!(
                "WARNING: Ignoring custom format, because both --format and --quiet are set."
            );
            None
        }
        Some(f) if !f.is_empty() => Some(f),
        _ => None,
    }
}

/// Writes `text` to stdout; a reader that went away (`arca images | head -n 1`) ends
/// the output quietly, where `print!` would panic.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Prints what a `--format` made; a template error exits 1, as Docker's CLI.
fn print_formatted(
    text: Result<String, arca_runtime::template::TemplateError>,
) -> Result<i32, String> {
    match text {
        Ok(t) => {
            emit(&t);
            Ok(0)
        }
        Err(e) => {
            eprintln!("arca: {}", e.docker_message());
            Ok(1)
        }
    }
}

/// What `arca build` was given.
/// `arca build`: Docker's exit codes (1 for a failed build, with BuildKit's
/// `ERROR: failed to solve:` line).
fn build(
    state: &std::path::Path,
    req: arca_runtime::build::builder::BuildRequest,
    iidfile: Option<PathBuf>,
) -> i32 {
    match arca_runtime::build::builder::build_request(state, &req) {
        Ok(built) => {
            if let Some(path) = &iidfile
                && let Err(e) = std::fs::write(path, format!("sha256:{}", built.id))
            {
                eprintln!(
                    "ERROR: cannot write the image ID to {}: {e}",
                    path.display()
                );
                return 1;
            }
            if req.opts.quiet {
                println!("sha256:{}", built.id);
            }
            0
        }
        Err(f) => {
            eprintln!("ERROR: {}", f.message);
            f.code
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    error_chain(e)
}

fn network_command(state: &std::path::Path, command: NetworkCmd) -> Result<i32, String> {
    match command {
        // As Docker's: errors of `network` commands exit with 1.
        NetworkCmd::Create {
            subnet,
            label,
            name,
        } => {
            let labels = arca_runtime::parse_labels(&label);
            match network::create_labelled(state, &name, subnet.as_deref(), labels) {
                Ok(net) => {
                    println!("{}", net.name);
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("arca: {}", chain(&e));
                    Ok(1)
                }
            }
        }
        NetworkCmd::Ls { quiet, format } => {
            network::reconcile(state);
            let nets = network::list(state).map_err(|e| chain(&e))?;
            if let Some(f) = format_unless_quiet(format, quiet) {
                return print_formatted(network::ls_formatted(&nets, &f));
            }
            if !quiet {
                println!(
                    "{:<24} {:<18} {:<16} {:<6}",
                    "NAME", "SUBNET", "BRIDGE", "STATE"
                );
            }
            for n in nets {
                if quiet {
                    println!("{}", n.name);
                } else {
                    let up = if network::is_up(&n) { "up" } else { "down" };
                    println!("{:<24} {:<18} {:<16} {:<6}", n.name, n.cidr(), n.bridge, up);
                }
            }
            Ok(0)
        }
        NetworkCmd::Rm { names } => each(&names, |n| network::remove(state, n)),
        NetworkCmd::Prune { force } => {
            if !force
                && !confirm(
                    "WARNING! This will remove all custom networks not used by at least one container.",
                )
            {
                return Ok(0);
            }
            match network::prune(state) {
                Ok(names) => {
                    print_deleted("Networks", &names);
                    Ok(0)
                }
                Err(e) => Ok(refused(&e)),
            }
        }
        NetworkCmd::Inspect { names } => {
            let mut found = Vec::new();
            let mut failed = false;
            for n in &names {
                match network::get(state, n) {
                    Ok(net) => found.push(net),
                    Err(e) => {
                        eprintln!("arca: {}", chain(&e));
                        failed = true;
                    }
                }
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&found).map_err(|e| e.to_string())?
            );
            Ok(if failed { 1 } else { 0 })
        }
    }
}

fn volume_command(state: &std::path::Path, command: VolumeCmd) -> Result<i32, String> {
    // As Docker's: errors of `volume` commands exit with 1 (bad flags with 125).
    let fail = |e: &dyn std::error::Error| Ok(refused(e));
    match command {
        VolumeCmd::Create {
            driver,
            opt,
            label,
            name,
        } => {
            let labels = arca_runtime::parse_labels(&label);
            let made = volume::check_create_options(driver.as_deref(), &opt).and_then(|()| {
                let name = name.unwrap_or_else(volume::anonymous_name);
                volume::validate_name(&name)?;
                let lock = volume::lock(state)?;
                volume::ensure(state, &lock, &name, labels, false)
            });
            match made {
                Ok((v, _)) => {
                    println!("{}", v.name);
                    Ok(0)
                }
                Err(e) => fail(&e),
            }
        }
        VolumeCmd::Ls {
            quiet,
            filter,
            format,
        } => {
            let mut volumes = match volume::list(state) {
                Ok(v) => v,
                Err(e) => return fail(&e),
            };
            for f in &filter {
                let (key, value) = f.split_once('=').unwrap_or((f, ""));
                match key {
                    "dangling" => {
                        let want = matches!(value, "true" | "1");
                        if !matches!(value, "true" | "1" | "false" | "0") {
                            return Err(format!("invalid filter 'dangling={value}'"));
                        }
                        let used = volume::in_use(state);
                        volumes.retain(|v| used.contains_key(&v.name) != want);
                    }
                    "name" => volumes.retain(|v| v.name.contains(value)),
                    "label" => {
                        let (k, val) = value
                            .split_once('=')
                            .map_or((value, None), |(k, v)| (k, Some(v)));
                        volumes.retain(|v| {
                            v.labels
                                .get(k)
                                .is_some_and(|x| val.is_none_or(|want| x == want))
                        });
                    }
                    _ => {
                        return Err(format!(
                            "invalid filter '{key}' (Arca takes dangling, name, label)"
                        ));
                    }
                }
            }
            if let Some(f) = format_unless_quiet(format, quiet) {
                return print_formatted(volume::ls_formatted(state, &volumes, &f));
            }
            if !quiet {
                println!("{:<10}VOLUME NAME", "DRIVER");
            }
            for v in volumes {
                if quiet {
                    println!("{}", v.name);
                } else {
                    println!("{:<10}{}", "local", v.name);
                }
            }
            Ok(0)
        }
        VolumeCmd::Inspect { names } => {
            let mut found = Vec::new();
            let mut failed = false;
            for n in &names {
                match volume::get(state, n) {
                    Ok(v) => found.push(volume::inspect_json(state, &v)),
                    Err(e) => {
                        eprintln!("arca: {}", chain(&e));
                        failed = true;
                    }
                }
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&found).map_err(|e| e.to_string())?
            );
            Ok(if failed { 1 } else { 0 })
        }
        VolumeCmd::Rm { force, names } => each(&names, |n| match volume::remove(state, n) {
            Err(volume::VolumeError::NotFound(_)) if force => Ok(()),
            other => other,
        }),
        VolumeCmd::Prune { all, force } => {
            let what = if all {
                "all local volumes not used by at least one container"
            } else {
                "anonymous local volumes not used by at least one container"
            };
            if !force && !confirm(&format!("WARNING! This will remove {what}.")) {
                return Ok(0);
            }
            Ok(report_prune("Volumes", volume::prune(state, all)))
        }
    }
}

#[cfg(test)]
mod alias_tests {
    use super::docker_aliases;

    fn rewrite(args: &[&str]) -> Vec<String> {
        docker_aliases(args.iter().map(Into::into).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn dockers_management_commands_name_ours() {
        assert_eq!(
            rewrite(&["arca", "container", "ls", "-a"]),
            ["arca", "ps", "-a"]
        );
        assert_eq!(
            rewrite(&["arca", "--state-dir", "/s", "image", "rm", "x"]),
            ["arca", "--state-dir", "/s", "rmi", "x"]
        );
        assert_eq!(rewrite(&["arca", "image", "ls"]), ["arca", "images"]);
        assert_eq!(
            rewrite(&["arca", "image", "inspect", "busybox"]),
            ["arca", "inspect", "--type", "image", "busybox"]
        );
        assert_eq!(
            rewrite(&["arca", "container", "run", "--rm", "busybox"]),
            ["arca", "run", "--rm", "busybox"]
        );
        // Commands of their own, and what is not a management command, stay.
        for same in [
            &["arca", "container", "prune", "-f"][..],
            &["arca", "system", "df"],
            &["arca", "run", "container", "ls"],
            &["arca", "image"],
        ] {
            assert_eq!(rewrite(same), same);
        }
    }
}
