package main

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
			name: "pin", synopsis: "[MANIFEST]", summary: "pin base.image to the exact bytes of the image",
			help: `Rewrites base.image in MANIFEST (default ./karapace.toml) to the image's URL or path with
"#sha256=DIGEST" appended, computed over every byte of the image; comments and layout are
kept. With --check, only reports whether base.image is pinned (exit 1 if not).`,
			flags:   []flagDef{{"check", "", "", "only check that base.image is pinned"}},
			maxArgs: 1, complete: "file", run: cmdPin,
		},
		{
			name: "doctor", summary: "check what building and running environments needs",
			help: `Checks user namespaces, the subordinate ID range and newuidmap/newgidmap, kernel
overlayfs inside a user namespace (mounted for real), fuse-overlayfs, cgroup delegation
for resource limits, and the store. One line each, with the fix for each problem; exit
status 1 if a build could not work.`,
			run: cmdDoctor,
		},
		{
			name:    "gc",
			summary: "remove objects, layers and directories no environment needs",
			help: `Marks everything the environments in the store refer to (archived ones
included) and removes the rest: environment directories without metadata,
layers, objects and leftover temporary files. --dry-run only reports.
Interrupting it (Ctrl-C) stops it between two items; the store stays
consistent and exit status is 130.`,
			flags: []flagDef{{long: "dry-run", help: "report what would be removed, remove nothing"}},
			run:   runGC,
		},
		{
			name:    "verify-store",
			summary: "re-hash every object, layer and metadata file and report damage",
			help: `Checks every object against its hash (on all cores), every layer manifest
and every metadata file (checksum, references). Lists each bad item and
exits with status 3 if there is any.`,
			run: runVerifyStore,
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
