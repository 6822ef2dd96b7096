package main

import (
	"reflect"
	"strings"
	"testing"
)

// Every setting of envFields goes everywhere from its one entry: a
// manifest that sets it gives a lock that records it (and reads back),
// another env_id, another preliminary id, drift when it changes, a line
// of inspect's summary, and a template that writes it back.
func TestEnvFieldsFlowEverywhere(t *testing.T) {
	plain := "manifest_version = 1\n[base]\nimage = \"debian/bookworm\"\n"
	base, err := parseManifest("k.toml", "/w/k.toml", []byte(plain))
	if err != nil {
		t.Fatal(err)
	}
	baseLock := newLock(base, "sha256:"+strings.Repeat("0", 64), "", nil)
	for i := range envFields {
		f := &envFields[i]
		t.Run(f.manifest, func(t *testing.T) {
			section, key := splitDotted(f.manifest)
			val := map[fieldKind]string{fieldBool: "true", fieldInt: "64", fieldString: `"mock"`, fieldStrings: `["wayland"]`}[f.kind]
			if f.names != "" {
				val = `["editor"]`
			}
			text := plain + "[" + section + "]\n" + key + " = " + val + "\n"
			m, err := parseManifest("k.toml", "/w/k.toml", []byte(text))
			if err != nil {
				t.Fatalf("%s: %v", text, err)
			}
			if !f.set(m) {
				t.Fatalf("the manifest did not read it")
			}
			l := newLock(m, baseLock.BaseImageDigest, "", nil)
			if !reflect.DeepEqual(f.value(l).Interface(), f.value(m).Interface()) {
				t.Fatalf("the lock holds %v, the manifest %v", f.value(l), f.value(m))
			}
			back := reread(t, l)
			if !reflect.DeepEqual(f.value(back).Interface(), f.value(m).Interface()) || back.verifyIntegrity() != nil {
				t.Fatalf("read back from the lock: %v", f.value(back))
			}
			if l.EnvID == baseLock.EnvID || m.previewID() == base.previewID() {
				t.Fatalf("the identities do not count it")
			}
			if err := back.verifyIntent(base); err == nil || !strings.Contains(err.Error(), f.manifest) {
				t.Fatalf("drift without it: %v", err)
			}
			if _, ok := lockSummary(l)[f.lock]; !ok {
				t.Fatalf("inspect's summary lacks %s", f.lock)
			}
			out, err := formatManifest(m)
			if err != nil {
				t.Fatal(err)
			}
			again, err := parseManifest("k.toml", "/w/k.toml", out)
			if err != nil || !reflect.DeepEqual(f.value(again).Interface(), f.value(m).Interface()) {
				t.Fatalf("the template wrote back:\n%s\n(%v)", out, err)
			}
		})
	}
}
