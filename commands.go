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
	}
}
