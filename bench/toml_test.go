// Package bench compares other TOML decoders with karapace's on the same
// documents; bench/toml.sh drives it.
package bench

import (
	"os"
	"path/filepath"
	"testing"

	burntsushi "github.com/BurntSushi/toml"
	pelletier "github.com/pelletier/go-toml/v2"
)

// doc reads a document that karapace's TestTOMLBenchDocs wrote into
// TOML_BENCH_DIR, so every decoder sees byte-identical input.
func doc(b *testing.B, name string) []byte {
	dir := os.Getenv("TOML_BENCH_DIR")
	if dir == "" {
		b.Fatal("TOML_BENCH_DIR is not set: run bench/toml.sh")
	}
	data, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	return data
}

func benchBurntSushi(b *testing.B, name string) {
	data := doc(b, name)
	for b.Loop() {
		var v map[string]any
		if err := burntsushi.Unmarshal(data, &v); err != nil {
			b.Fatal(err)
		}
	}
}

func benchPelletier(b *testing.B, name string) {
	data := doc(b, name)
	for b.Loop() {
		var v map[string]any
		if err := pelletier.Unmarshal(data, &v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkBurntSushiManifest(b *testing.B) { benchBurntSushi(b, "manifest.toml") }
func BenchmarkBurntSushi1MiB(b *testing.B)     { benchBurntSushi(b, "1mib.toml") }
func BenchmarkPelletierManifest(b *testing.B)  { benchPelletier(b, "manifest.toml") }
func BenchmarkPelletier1MiB(b *testing.B)      { benchPelletier(b, "1mib.toml") }
