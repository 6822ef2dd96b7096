package main

import (
	"os"
	"testing"
)

func TestWriteFileAtomicKeepsOldOnFailure(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "karapace.lock", "old")
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	err := writeFileAtomic(p, []byte("new"), 0o644)
	if os.Geteuid() == 0 {
		// root ignores directory permissions; the write must then succeed whole.
		if err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(p)
		if string(got) != "new" {
			t.Fatalf("got %q", got)
		}
		return
	}
	if err == nil {
		t.Fatal("write into a read-only directory succeeded")
	}
	got, _ := os.ReadFile(p)
	if string(got) != "old" {
		t.Fatalf("old content lost: %q", got)
	}
}

// readLimited reads a file whole up to the limit and refuses one larger,
// whose first bytes it does not return.
func TestReadLimited(t *testing.T) {
	p := writeFile(t, t.TempDir(), "f", "12345")
	if got, err := readLimited(p, 5); err != nil || string(got) != "12345" {
		t.Fatalf("at the limit: %q %v", got, err)
	}
	if got, err := readLimited(p, 4); err == nil || got != nil || err.Error() != "file is larger than 4 bytes" {
		t.Fatalf("over the limit: %q %v", got, err)
	}
	f, _ := os.Open(p)
	defer f.Close()
	if got, _ := readAllLimited(f, 3); len(got) < 3 || string(got[:3]) != "123" {
		t.Fatalf("readAllLimited: %q", got)
	}
}
