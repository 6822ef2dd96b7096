package main

var buildFlags = []flagDef{
	{"name", "n", "NAME", "give the environment this unique name"},
	{"locked", "", "", "build exactly what karapace.lock pins; fail if it is missing or differs"},
	{"offline", "", "", "use no network at all (image and packages must be in the store)"},
	{"require-pinned-image", "", "", "refuse a base.image that is not pinned to a digest"},
	{"allow-insecure", "", "", "allow an http:// base.image that no digest pins (anyone on the network path could swap it)"},
}

func init() {
	commands = []*command{
		{
			name: "new", synopsis: "NAME", summary: "write a karapace.toml from a template",
			help: `Writes ./karapace.toml from a template (default: minimal). On a terminal it asks for the
base image, packages, workspace mount, backend and network isolation, offering the
template's values; elsewhere it writes the template as it is. An existing karapace.toml
is only replaced with --force (or after a yes on a terminal). NAME is the environment
name to build it under.`,
			flags: []flagDef{
				{"template", "t", "T", "template: minimal, dev, gui-dev, rust-dev, ubuntu-dev"},
				{"force", "f", "", "replace an existing karapace.toml"},
			},
			minArgs: 1, maxArgs: 1, complete: "template", run: cmdNew,
		},
		{
			name: "build", synopsis: "[MANIFEST]", summary: "resolve, lock and build an environment; prints its env_id",
			help: `Parses MANIFEST (default ./karapace.toml), resolves the base image and the packages,
writes karapace.lock beside it and builds the environment in the store. When the lock
exists and matches the manifest, exactly what it pins is built, from the store when it
was built before; --locked insists on that and fails on any difference. Prints the
env_id on stdout.`,
			flags:   buildFlags,
			maxArgs: 1, complete: "file", run: cmdBuild,
		},
		{
			name: "rebuild", synopsis: "[MANIFEST]", summary: "build again, then destroy the environment the lock named",
			help: `Builds the manifest like build, then destroys the environment the old lock named and
moves its name to the new one. A failed build leaves the old environment as it was.`,
			flags:   buildFlags,
			maxArgs: 1, complete: "file", run: cmdRebuild,
		},
		{
			name: "pin", synopsis: "[MANIFEST]", summary: "pin base.image to the exact bytes of the image",
			help: `Rewrites base.image in MANIFEST (default ./karapace.toml) to the exact image: an alias
of the LXC image server (images:ALIAS, or any bare alias but Debian's and Ubuntu's)
becomes the server's URL with the sha256 its index gives; a URL or path gets
"#sha256=DIGEST" appended, computed over every byte (a URL is downloaded into the image
cache). Comments and layout are kept. With --check, only reports whether base.image is
pinned (exit 1 if not).

A bare Debian or Ubuntu alias (debian/bookworm) is bootstrapped from the distribution's
archive (unless [images] source = "lxc"), which has no image file: pin refuses it (exit 2)
rather than switch the source.
Use images:debian/bookworm to pin the LXC image instead, or keep the alias and rely on
karapace.lock (build --locked) with a snapshot mirror such as
[images] debian_mirror = "https://snapshot.debian.org/archive/debian/20250101T000000Z".`,
			flags: []flagDef{
				{"check", "", "", "only check that base.image is pinned"},
				{"write-lock", "", "", "then build, writing karapace.lock"},
				{"allow-insecure", "", "", "pin an http:// base.image from what the download gives (anyone on the network path could swap it)"},
			},
			maxArgs: 1, complete: "file", run: cmdPin,
		},
		{
			name: "enter", synopsis: "ENV [-- CMD...]", summary: "open an interactive login shell (or CMD) in an environment",
			help: `Starts a login shell in ENV (an env_id, a unique prefix, or a name) on a new
pseudo-terminal relayed to yours: job control works, the window size follows yours, and
Ctrl-C reaches the shell's job, not karapace. While you are inside, the environment is
running; other sessions join the same instance.`,
			minArgs: 1, maxArgs: 1, dash: optionalDash, complete: "env", run: cmdEnter,
		},
		{
			name: "exec", synopsis: "ENV -- CMD...", summary: "run a command in an environment; its exit status is ours",
			help: `Runs CMD in ENV with your stdin, stdout and stderr. SIGINT, SIGTERM, SIGHUP and SIGQUIT
are passed on; the exit status is the command's, or 128+N when a signal N ended it, 127
when CMD is not found and 126 when it cannot be executed. Stdout is CMD's own, with or
without --json, which makes karapace's errors JSON on stderr.`,
			minArgs: 1, maxArgs: 1, dash: requiredDash, complete: "env", run: cmdExec,
		},
		{
			name: "stop", synopsis: "ENV", summary: "stop a running environment (SIGTERM, then SIGKILL)",
			flags:   []flagDef{{"timeout", "", "DURATION", "how long to wait after SIGTERM before SIGKILL (default 10s)"}},
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdStop,
		},
		{
			name: "destroy", synopsis: "ENV", summary: "remove an environment (refused while it runs)",
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdDestroy,
		},
		{
			name: "freeze", synopsis: "ENV", summary: "make an environment read-only",
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdState(stateFrozen, "froze"),
		},
		{
			name: "unfreeze", synopsis: "ENV", summary: "make a frozen environment writable again",
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdUndoState(stateFrozen, "unfroze"),
		},
		{
			name: "archive", synopsis: "ENV", summary: "keep an environment but refuse entering it (gc keeps it)",
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdState(stateArchived, "archived"),
		},
		{
			name: "unarchive", synopsis: "ENV", summary: "allow entering an archived environment again",
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdUndoState(stateArchived, "unarchived"),
		},
		{
			name: "list", summary: "list the environments in the store",
			flags: []flagDef{{"quiet", "q", "", "only names and short ids, one per line"}},
			run:   cmdList,
		},
		{
			name: "inspect", synopsis: "ENV", summary: "show an environment's metadata and lock",
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdInspect,
		},
		{
			name: "tui", summary: "browse and manage the environments in a terminal UI",
			help: `Shows the store's environments (SHORT_ID NAME STATE SIZE UPDATED) full screen, with
vim keys: j/k or the arrows move, g/G or Home/End go to the first and last, Enter shows
an environment's detail (its lock, layers, snapshots and mounts), / filters, s sorts by
the next column and S reverses, r reads the store again, ? lists every key, q or Esc
goes back and quits from the list. n renames, f freezes, a archives, d destroys (each
that loses something asks y/N), e enters the environment (a login shell on this
terminal; the UI comes back when it exits), c commits its writable layer, v lists its
snapshots to restore one, x collects garbage. States follow the store as it changes,
another terminal's exec included. Long actions run in the background, their progress
on the status line. Needs a terminal: elsewhere it refuses (exit 2); use list. Colour
only where allowed (not with NO_COLOR).`,
			run: cmdTUI,
		},
		{
			name: "diff", synopsis: "ENV", summary: "list paths added, modified or removed in the writable layer",
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdDiff,
		},
		{
			name: "commit", synopsis: "ENV", summary: "store the writable layer as a snapshot; prints its hash",
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdCommit,
		},
		{
			name: "snapshots", synopsis: "ENV", summary: "list an environment's snapshots",
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdSnapshots,
		},
		{
			name: "restore", synopsis: "ENV SNAPSHOT", summary: "make a snapshot the writable layer again",
			help: `SNAPSHOT is a snapshot's hash, a unique beginning of it, or its number in
'karapace snapshots' (#2). Changes of the writable layer that no snapshot
holds are refused, not lost: commit them first, or pass --force.`,
			flags:   []flagDef{{long: "force", help: "drop the writable layer's changes that no snapshot holds"}},
			minArgs: 2, maxArgs: 2, complete: "env", run: cmdRestore,
		},
		{
			name: "rename", synopsis: "ENV NAME", summary: "give an environment a unique name",
			minArgs: 2, maxArgs: 2, complete: "env", run: cmdRename,
		},
		{
			name: "push", synopsis: "ENV", summary: "send an environment to a remote store",
			help: `Sends ENV to the remote: a karapace server (http:// or https://, protocol v1) or an OCI
registry (oci://HOST[:PORT]/REPOSITORY). Only the blobs the remote lacks are sent, four at
a time, streamed from the store; the metadata goes last, then the tag. The remote is
--remote, else $KARAPACE_REMOTE, else url in [remote] of the configuration file; the
server's token comes from $KARAPACE_TOKEN or token in [remote], a registry's credentials
from $KARAPACE_REGISTRY_USER and $KARAPACE_REGISTRY_PASSWORD (or registry_user and
registry_password), never from a flag. $KARAPACE_CA_CERT (or ca_cert) names an extra CA
certificate to trust. On an OCI registry, NAME@TAG is the repository REPOSITORY/NAME with
the tag TAG, and every environment is also in REPOSITORY tagged with its env_id. Plain
http to a registry only for loopback hosts or with --insecure-registry. An env_id's layers
never change once published: an environment the remote holds with other layers (after a
commit, say) is refused before anything is sent; tags can move to another environment. The
store is locked shared while push reads it: a gc or a destroy waits for it.`,
			flags: []flagDef{
				{"tag", "t", "NAME@TAG", "also point this tag at the environment"},
				{"remote", "", "URL", "the remote (default: $KARAPACE_REMOTE, else [remote] url)"},
				{"insecure-registry", "", "", "allow plain http to an OCI registry that is not on this machine"},
			},
			minArgs: 1, maxArgs: 1, complete: "env", run: cmdPush,
		},
		{
			name: "pull", synopsis: "REF", summary: "fetch an environment from a remote store; prints its env_id",
			help: `Fetches the environment REF names: NAME@TAG, a full env_id, or a unique prefix of one.
Every blob is checked against its hash before it enters the store, an object larger than
--max-object-size is cut off, and everything is written under one operation: a failed or
interrupted pull leaves nothing behind. The environment keeps its state and its name if
that is free here (else the pull fails; --name gives another). Its writable layer is its
last restored snapshot, or empty. An environment already in the store is left as it is.
The environment must come with its own lock (its fields give its env_id), and with the
layers this store binds its env_id to, if it ever held it (built, pulled or imported; see
store/bindings): a remote cannot swap them. A server that sends nothing for
$KARAPACE_HTTP_TIMEOUT (default 1m) fails the pull; the token never follows a redirect to
another origin. The remote and credentials are found as for push.`,
			flags: []flagDef{
				{"remote", "", "URL", "the remote (default: $KARAPACE_REMOTE, else [remote] url)"},
				{"name", "n", "NAME", "store the environment under this name"},
				{"insecure-registry", "", "", "allow plain http to an OCI registry that is not on this machine"},
				{"max-object-size", "", "SIZE", "refuse an object larger than SIZE, like 512M or 16G (default 16G)"},
			},
			minArgs: 1, maxArgs: 1, run: cmdPull,
		},
		{
			name: "export", synopsis: "ENV FILE", summary: "write an environment to one archive, for machines without a network",
			help: `Writes ENV, with every layer and object it needs, to FILE (- for stdout) as one tar
archive with an index, the same bytes for the same environment. FILE appears only when it is
complete. 'karapace import FILE' reads it back on another machine.`,
			minArgs: 2, maxArgs: 2, complete: "env", run: cmdExport,
		},
		{
			name: "import", synopsis: "FILE", summary: "read an environment from an export archive; prints its env_id",
			help: `Reads an archive written by export (- for stdin). Every blob is checked against its hash
before it enters the store; an archive that lacks a blob, holds one the environment does not
need, or has a damaged byte is refused, and nothing of it is kept, as is an environment with
another lock or other layers than this store binds its env_id to (see pull).`,
			flags:   []flagDef{{"name", "n", "NAME", "store the environment under this name"}},
			minArgs: 1, maxArgs: 1, complete: "file", run: cmdImport,
		},
		{
			name: "server", summary: "serve a remote store (protocol v1) over HTTP or HTTPS",
			help: `Serves the store in --data DIR to push and pull. Protocol v1: HEAD, GET and PUT
/blobs/KIND/HASH (KIND object, layer or metadata), GET and PUT /registry (a JSON map of
NAME@TAG to env_id, with ETag and If-Match), GET /list. Uploads are checked against their
names while they stream and kept only if they match; a layer or metadata whose references
the server lacks is refused (409), and so is metadata of an environment it holds that names
other layers: an env_id's layers never change once stored, tags can move. Every request
needs "Authorization: Bearer TOKEN" with a token of --tokens FILE (one "TOKEN rw" or
"TOKEN ro" a line, at least 16 characters); PUT needs rw, and a request without them is
answered before its body is read. Without --tokens the server refuses to start unless
--no-auth is given. The first line on stdout is the URL served. SIGTERM or SIGINT stops it
after the requests in flight.`,
			flags: []flagDef{
				{"listen", "", "ADDR", "address to listen on, like 127.0.0.1:8700 (port 0: any free port)"},
				{"data", "", "DIR", "the store to serve (created if missing)"},
				{"tokens", "", "FILE", "token file: lines of \"TOKEN rw\" or \"TOKEN ro\""},
				{"no-auth", "", "", "serve without authentication"},
				{"tls-cert", "", "FILE", "serve HTTPS with this certificate (PEM)"},
				{"tls-key", "", "FILE", "the certificate's private key (PEM)"},
				{"max-blob-size", "", "SIZE", "refuse objects larger than SIZE (default 16G)"},
				{"max-uploads", "", "N", "uploads and registry writes processed at once; more wait (default 16)"},
				{"io-timeout", "", "DURATION", "drop a client that sends or takes nothing for this long (default 2m)"},
				{"min-upload-rate", "", "RATE", "drop an upload slower than RATE bytes a second over 10s, like 4K (default 4K)"},
				{"max-client-conns", "", "N", "connections one client address may hold open; more are closed at once (default 64)"},
			},
			run: cmdServer,
		},
		{
			name: "dbus", summary: "serve org.karapace.Manager1 on the session bus",
			help: `Serves the D-Bus service org.karapace.Manager1 (object /org/karapace/Manager1) on the
session bus ($DBUS_SESSION_BUS_ADDRESS, else $XDG_RUNTIME_DIR/bus) for desktop front
ends: ListEnvironments, GetEnvironmentStatus, GetEnvironmentHash, BuildEnvironment,
BuildNamedEnvironment, DestroyEnvironment, RunEnvironment, StopEnvironment,
RenameEnvironment, ListPresets, GarbageCollect and VerifyStore, whose results are the
JSON of the commands' --json; errors are D-Bus errors named org.karapace.Error.NotFound,
ManifestInvalid, StoreBusy, Store, InvalidArgument or Failed. Properties ApiVersion and
StoreRoot; signals EnvironmentChanged(env_id, state) for what the service changes and
BuildProgress(job, phase, done, total), where job is the caller's unique name and the
call's serial, like ":1.42/7". Manifest paths must be absolute. RunEnvironment starts the
environment and holds it running (a login shell without a terminal) until
StopEnvironment, 'karapace stop' or the service's exit; exec, enter and launchers join
it. A build's end shows a desktop notification where a notification server runs. Calls
run side by side; only the service's own user may make them. It exits after
--idle-timeout without calls (the bus starts it again), and refuses to start when
another process has the name. --install writes the bus activation file and a systemd
user unit for this binary and store into $XDG_DATA_HOME/dbus-1/services and
$XDG_CONFIG_HOME/systemd/user (without systemd's sandboxing, which would take away the
subordinate ID range builds need; the environments are sandboxed by karapace).`,
			flags: []flagDef{
				{"idle-timeout", "", "DURATION", "exit after this long without calls (default 30s; 0: never)"},
				{"install", "", "", "write the activation file and the systemd user unit, then exit"},
			},
			run: cmdDBus,
		},
		{
			name: "doctor", summary: "check what building and running environments needs",
			help: `Checks user namespaces, the subordinate ID range and newuidmap/newgidmap, kernel
overlayfs inside a user namespace (mounted for real), idmapped mounts, fuse-overlayfs,
the sandbox's protections, what applies each resource limit (cgroup controllers), and the
store: free disk space, who holds its lock, operations a crash left in the WAL and a
re-hashed random sample of its objects. It only looks: nothing is rolled back or removed.
One line each, with the fix for each problem; exit status 1 if a build could not work.`,
			run: cmdDoctor,
		},
		{
			name: "completions", synopsis: "SHELL", summary: "print shell completion for bash, zsh, fish, elvish or powershell",
			help: `Prints a completion script for SHELL, generated from the same command table as --help:
commands, flags and, from 'karapace list --quiet', environment names. For bash, for example:
karapace completions bash > ~/.local/share/bash-completion/completions/karapace`,
			minArgs: 1, maxArgs: 1, complete: "shell", run: cmdCompletions,
		},
		{
			name: "man-pages", synopsis: "[DIR]", summary: "write the manual pages (default: ./man)",
			help:    `Writes karapace(1) and one page per command, in mdoc, into DIR.`,
			maxArgs: 1, complete: "dir", run: cmdManPages,
		},
		{
			name:    "gc",
			summary: "remove objects, layers and directories no environment needs",
			help: `Marks everything the environments in the store refer to (archived ones
included) and removes the rest: environment directories without metadata,
layers, objects and leftover temporary files, and the image cache's
indices of layers that are gone. --images also removes the cached
downloads (images, packages, archive indices): environments and locks
whose layers are in the store rebuild without them. --dry-run only reports.
Interrupting it (Ctrl-C) stops it between two items; the store stays
consistent and exit status is 130.`,
			flags: []flagDef{
				{long: "dry-run", help: "report what would be removed, remove nothing"},
				{long: "images", help: "also remove the cached image and package downloads"},
			},
			run: runGC,
		},
		{
			name:    "verify-store",
			summary: "re-hash every object, layer and metadata file and report damage",
			help: `Checks every object against its hash (on all cores), every layer manifest
and every metadata file (checksum, references). Lists each bad item and
exits with status 3 if there is any.

With --rebuild ENV, checks instead that ENV's lock gives ENV's bytes: builds it
again from the lock kept with it, as build --locked would, in a scratch store
beside this one (STORE-rebuild-*, with its own downloads; removed afterwards),
and compares its base and dependency layers with ENV's, naming each path that
differs and how (content, mode, owner, time, link target, xattrs). Snapshots
and the writable layer are the user's, not the lock's, and are not compared.
It needs the network, or the mirror the configuration names. Exit status 0:
the same bytes; 3: they differ; 1 or 2: the rebuild itself failed.`,
			flags: []flagDef{{"rebuild", "", "ENV", "build ENV again from its lock in a scratch store and compare its layers byte for byte"}},
			run:   runVerifyStore,
		},
		{
			name:    "migrate",
			summary: "convert an older store to the current format",
			help: `Converts a store written by the original karapace (format 1) to format 2 in
place: layer manifests and metadata are rewritten, the old version file is
kept as store/version.v1.bak. Running it again after an interruption
finishes the job. A current store is left alone.`,
			run: runMigrate,
		},
	}
}
