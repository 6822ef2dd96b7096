package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The watch hears what changes an environment: its metadata written
// (renamed in, as the store writes it) and removed, an instance's marker
// made or removed, and the instance's end, which leaves the marker
// behind; also for an environment whose directories are made after the
// watch began, with the instance started at once.
func TestStoreWatch(t *testing.T) {
	s, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	putMeta := func(id string) {
		tmp := s.path("staging", id+".tmp")
		os.WriteFile(tmp, []byte("{}"), 0o600)
		if err := os.Rename(tmp, s.path("metadata", id)); err != nil {
			t.Fatal(err)
		}
	}
	startInit := func() *exec.Cmd {
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}
	mark := func(id string) {
		run := s.envs().env(id).run()
		os.WriteFile(run.marker()+".tmp", []byte("{}"), 0o600)
		if err := os.Rename(run.marker()+".tmp", run.marker()); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	inits := map[string]*exec.Cmd{}
	setInit := func(id string, cmd *exec.Cmd) {
		mu.Lock()
		defer mu.Unlock()
		inits[id] = cmd
	}
	// An environment there before the watch.
	old := storeBlake3Hex([]byte("old"))
	putMeta(old)
	os.MkdirAll(string(s.envs().env(old).run()), 0o700)

	w, err := watchStore(s, func(id string) (int, bool) {
		mu.Lock()
		defer mu.Unlock()
		if cmd := inits[id]; cmd != nil {
			return cmd.Process.Pid, true
		}
		return 0, false
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	expect := func(what, id string) {
		t.Helper()
		for deadline := time.After(10 * time.Second); ; {
			select {
			case got := <-w.changes():
				if got == id {
					return
				}
			case <-deadline:
				t.Fatalf("%s: no change of %s heard", what, id[:12])
			}
		}
	}
	// settle waits until the watch has handled everything before it: a
	// change it hears after all that came before.
	settle := func(n int) {
		t.Helper()
		id := storeBlake3Hex([]byte(fmt.Sprint("sentinel", n)))
		putMeta(id)
		expect("sentinel", id)
	}

	setInit(old, startInit())
	mark(old)
	expect("instance started", old)
	init := inits[old]
	setInit(old, nil)
	init.Process.Kill()
	expect("instance ended, the marker left behind", old)
	os.Remove(s.envs().env(old).run().marker())
	expect("marker removed", old)
	os.Remove(s.path("metadata", old))
	expect("metadata removed", old)

	// A new environment: metadata first (no env/ at all yet), then its
	// directories and at once an instance.
	id := storeBlake3Hex([]byte("new"))
	putMeta(id)
	expect("metadata renamed in", id)
	os.MkdirAll(string(s.envs()), 0o700)
	settle(1) // env/ made after the watch looked for it: a rescan finds the next
	putMeta(id)
	expect("metadata rewritten", id)
	setInit(id, startInit())
	os.MkdirAll(string(s.envs().env(id).run()), 0o700)
	mark(id)
	expect("instance started", id)
	settle(2)
	init = inits[id]
	setInit(id, nil)
	init.Process.Kill()
	expect("instance ended", id)
}

// A reader that falls behind loses changes, and hears "" (anything may
// have changed) instead of blocking the watch.
func TestStoreWatchLost(t *testing.T) {
	s, err := openStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	w, err := watchStore(s, func(string) (int, bool) { return 0, false })
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	for i := 0; i < 200; i++ {
		os.WriteFile(filepath.Join(s.path("metadata"), storeBlake3Hex([]byte(fmt.Sprint(i)))), nil, 0o600)
	}
	// Once the reader catches up, changes come by name again: each ""
	// is answered with a new change, until one is heard.
	lost, later := false, ""
	for deadline := time.After(10 * time.Second); ; {
		select {
		case id := <-w.changes():
			if later != "" && id == later {
				return
			}
			if id == "" {
				lost = true
				later = storeBlake3Hex([]byte(fmt.Sprint("later", time.Now().UnixNano())))
				os.WriteFile(filepath.Join(s.path("metadata"), later), nil, 0o600)
			}
		case <-deadline:
			t.Fatalf("a loss said: %v; a change after it heard: false", lost)
		}
	}
}
