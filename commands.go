package main

func init() {
	commands = []*command{
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
