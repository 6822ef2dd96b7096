package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"sync"

	"lukechampine.com/blake3"
)

// verifyProblem is one bad item found by verify.
type verifyProblem struct {
	Kind    string `json:"kind"` // object, layer, metadata
	Name    string `json:"name"`
	Problem string `json:"problem"`
}

// verifyReport counts what verify checked and lists what is wrong.
type verifyReport struct {
	Objects  int             `json:"objects"`
	Layers   int             `json:"layers"`
	Metadata int             `json:"metadata"`
	Bytes    int64           `json:"bytes"`
	Bad      []verifyProblem `json:"bad"`
}

// verify takes the lock and checks the whole store; see verifyLocked.
func (s *store) verify(ctx context.Context) (verifyReport, error) {
	l, err := s.lock("verify-store")
	if err != nil {
		return verifyReport{Bad: []verifyProblem{}}, err
	}
	defer l.unlock()
	return s.verifyLocked(ctx)
}

// verifyLocked re-hashes every object (on all cores), checks every layer
// (canonical, named by its hash, its objects and parent present) and every
// metadata file (checksum, its layers and objects present, unique name).
// The caller holds the lock.
func (s *store) verifyLocked(ctx context.Context) (verifyReport, error) {
	rep := verifyReport{Bad: []verifyProblem{}}
	bad := func(kind, name, format string, a ...any) {
		rep.Bad = append(rep.Bad, verifyProblem{kind, name, fmt.Sprintf(format, a...)})
	}

	objects, err := s.listObjects()
	if err != nil {
		return rep, err
	}
	rep.Objects = len(objects)
	for _, r := range s.hashObjects(ctx, objects) {
		rep.Bytes += r.size
		if r.problem != "" {
			bad("object", r.name, "%s", r.problem)
		}
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("verify-store interrupted: %w", err)
	}

	layers, err := s.listLayers()
	if err != nil {
		return rep, err
	}
	rep.Layers = len(layers)
	for _, h := range layers {
		l, err := s.getLayer(h)
		if err != nil {
			bad("layer", h, "%v", err)
			continue
		}
		for _, o := range l.ObjectRefs {
			if !s.hasObject(o) {
				bad("layer", h, "refers to object %s, which is missing", o)
			}
		}
		if l.Parent != "" && !s.hasLayer(l.Parent) {
			bad("layer", h, "refers to parent layer %s, which is missing", l.Parent)
		}
	}

	names, err := s.listDir("metadata")
	if err != nil {
		return rep, err
	}
	rep.Metadata = len(names)
	byName := map[string]string{}
	for _, id := range names {
		if !validStoreHash(id) {
			bad("metadata", id, "not a valid environment id")
			continue
		}
		m, err := s.getMeta(id)
		if err != nil {
			bad("metadata", id, "%v", err)
			continue
		}
		for _, h := range m.layerRefs() {
			if !s.hasLayer(h) {
				bad("metadata", id, "refers to layer %s, which is missing", h)
			}
		}
		for _, h := range m.objectRefs() {
			if !s.hasObject(h) {
				bad("metadata", id, "refers to object %s, which is missing", h)
			}
		}
		if m.Name != "" {
			if other, ok := byName[m.Name]; ok {
				bad("metadata", id, "name %q is also used by environment %s", m.Name, other)
			}
			byName[m.Name] = id
		}
	}
	return rep, nil
}

type objectCheck struct {
	name    string
	size    int64
	problem string
}

// hashObjects re-hashes the named objects with one worker per CPU and
// returns the results in the order of names.
func (s *store) hashObjects(ctx context.Context, names []string) []objectCheck {
	res := make([]objectCheck, len(names))
	jobs := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < max(1, runtime.NumCPU()); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := blake3.New(32, nil)
			buf := make([]byte, 1<<20)
			for i := range jobs {
				res[i] = s.checkObject(names[i], h, buf)
			}
		}()
	}
	for i := range names {
		if ctx.Err() != nil {
			break
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return res
}

func (s *store) checkObject(name string, h *blake3.Hasher, buf []byte) objectCheck {
	c := objectCheck{name: name}
	if !validStoreHash(name) {
		c.problem = "not a valid object name (expected 64 lowercase hex digits)"
		return c
	}
	f, err := os.Open(s.path("objects", name))
	if err != nil {
		c.problem = err.Error()
		return c
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		c.problem = "not a regular file"
		return c
	}
	h.Reset()
	for {
		n, err := f.Read(buf)
		h.Write(buf[:n])
		c.size += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			c.problem = fmt.Sprintf("reading: %v", err)
			return c
		}
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != name {
		c.problem = fmt.Sprintf("corrupt: content hashes to %s", got)
	}
	return c
}

func runVerifyStore(c *cli) error {
	s, err := c.openStore()
	if err != nil {
		return err
	}
	rep, err := s.verify(context.Background())
	if err != nil {
		return err
	}
	sort.SliceStable(rep.Bad, func(i, j int) bool { return rep.Bad[i].Kind < rep.Bad[j].Kind })
	if c.json {
		writeJSON(c.stdout, rep)
	} else {
		for _, p := range rep.Bad {
			fmt.Fprintf(c.stdout, "bad %s %s: %s\n", p.Kind, p.Name, p.Problem)
		}
		fmt.Fprintf(c.stdout, "checked %s (%s), %s, %s: %s\n",
			gcPlural(rep.Objects, "object", "objects"), storeFormatBytes(rep.Bytes),
			gcPlural(rep.Layers, "layer", "layers"), gcPlural(rep.Metadata, "metadata file", "metadata files"),
			map[bool]string{true: "all good", false: gcPlural(len(rep.Bad), "problem", "problems")}[len(rep.Bad) == 0])
	}
	if len(rep.Bad) > 0 {
		return storeErrorf("verify-store found %s in %s", gcPlural(len(rep.Bad), "problem", "problems"), s.dir)
	}
	return nil
}
