// Command verify checks a Passerelle audit log with an independent
// implementation: golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog.
//
// Usage: verify PUBLIC_DIR VERIFIER_KEY OLD_CHECKPOINT [EVIDENCE_DIR SIGNER_KEY]
//
// With three arguments (an auditor's check of a log and a checkpoint kept from
// before) it stops after the consistency proof with the old checkpoint; the
// last two are the cross-checks of the project's own tests.
//
// It verifies the checkpoint signatures; recomputes the tree root from the
// tiles (tlog.TileHashReader checks every tile it reads against the signed
// root); checks every entry of every entry bundle against the tiles with
// tlog.ProveRecord/CheckRecord; checks the inclusion proofs (tlog-proof
// files) and the consistency proof that the Rust code wrote to EVIDENCE_DIR;
// proves consistency with the old checkpoint with tlog.ProveTree/CheckTree;
// and signs a note with the Rust-written signer key, for the Rust side to
// verify. It prints "ok ..." lines and exits 1 on the first failure.
package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/ioutil"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func fail(format string, args ...interface{}) {
	fmt.Printf("FAIL: "+format+"\n", args...)
	os.Exit(1)
}

type checkpoint struct {
	origin string
	size   int64
	root   tlog.Hash
}

func openCheckpoint(data []byte, verifiers note.Verifiers) checkpoint {
	n, err := note.Open(data, verifiers)
	if err != nil {
		fail("note.Open: %v", err)
	}
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 {
		fail("checkpoint has too few lines: %q", n.Text)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		fail("checkpoint size: %v", err)
	}
	root, err := tlog.ParseHash(lines[2])
	if err != nil {
		fail("checkpoint root: %v", err)
	}
	return checkpoint{lines[0], size, root}
}

// tileReader reads c2sp tlog-tiles paths, which, unlike x/mod's own tile
// paths, do not carry the tile height.
type tileReader struct{ dir string }

func (r tileReader) Height() int { return 8 }

func (r tileReader) path(t tlog.Tile) string {
	p := t.Path() // tile/8/L/NNN[.p/W]
	return filepath.Join(r.dir, "tile", strings.TrimPrefix(p, "tile/8/"))
}

func (r tileReader) ReadTiles(tiles []tlog.Tile) ([][]byte, error) {
	out := make([][]byte, len(tiles))
	for i, t := range tiles {
		data, err := ioutil.ReadFile(r.path(t))
		if errors.Is(err, os.ErrNotExist) && t.W < 256 {
			full := t
			full.W = 256
			data, err = ioutil.ReadFile(r.path(full))
			if err == nil && len(data) >= t.W*32 {
				data = data[:t.W*32]
			}
		}
		if err != nil {
			return nil, err
		}
		out[i] = data
	}
	return out, nil
}

func (r tileReader) SaveTiles(tiles []tlog.Tile, data [][]byte) {}

func entriesPath(dir string, n int64, w int) string {
	t := tlog.Tile{H: 8, L: 0, N: n, W: w}
	return filepath.Join(dir, "tile", "entries", strings.TrimPrefix(t.Path(), "tile/8/0/"))
}

func readEntries(dir string, size int64) [][]byte {
	var entries [][]byte
	for n := int64(0); n*256 < size; n++ {
		w := 256
		if (n+1)*256 > size {
			w = int(size - n*256)
		}
		data, err := ioutil.ReadFile(entriesPath(dir, n, w))
		if err != nil {
			fail("entry bundle %d: %v", n, err)
		}
		for len(data) > 0 {
			if len(data) < 2 {
				fail("entry bundle %d is truncated", n)
			}
			l := int(binary.BigEndian.Uint16(data))
			if len(data) < 2+l {
				fail("entry bundle %d is truncated", n)
			}
			entries = append(entries, data[2:2+l])
			data = data[2+l:]
		}
	}
	if int64(len(entries)) != size {
		fail("bundles hold %d entries, checkpoint says %d", len(entries), size)
	}
	return entries
}

func parseHashes(lines []string) tlog.TreeProof {
	var p tlog.TreeProof
	for _, l := range lines {
		if l == "" {
			continue
		}
		h, err := tlog.ParseHash(l)
		if err != nil {
			fail("proof hash %q: %v", l, err)
		}
		p = append(p, h)
	}
	return p
}

func main() {
	if len(os.Args) != 4 && len(os.Args) != 6 {
		fail("usage: verify PUBLIC_DIR VERIFIER_KEY OLD_CHECKPOINT [EVIDENCE_DIR SIGNER_KEY]")
	}
	dir, vkey, oldFile := os.Args[1], os.Args[2], os.Args[3]
	v, err := note.NewVerifier(vkey)
	if err != nil {
		fail("note.NewVerifier: %v", err)
	}
	verifiers := note.VerifierList(v)

	data, err := ioutil.ReadFile(filepath.Join(dir, "checkpoint"))
	if err != nil {
		fail("%v", err)
	}
	cp := openCheckpoint(data, verifiers)
	fmt.Printf("ok checkpoint signature: %s size %d\n", cp.origin, cp.size)

	tree := tlog.Tree{N: cp.size, Hash: cp.root}
	hr := tlog.TileHashReader(tree, tileReader{dir})
	th, err := tlog.TreeHash(cp.size, hr)
	if err != nil {
		fail("tlog.TreeHash: %v", err)
	}
	if th != cp.root {
		fail("root from tiles %v differs from checkpoint %v", th, cp.root)
	}
	fmt.Println("ok root recomputed from tiles")

	entries := readEntries(dir, cp.size)
	for i, e := range entries {
		p, err := tlog.ProveRecord(cp.size, int64(i), hr)
		if err != nil {
			fail("tlog.ProveRecord(%d): %v", i, err)
		}
		if err := tlog.CheckRecord(p, cp.size, cp.root, int64(i), tlog.RecordHash(e)); err != nil {
			fail("entry %d: %v", i, err)
		}
	}
	fmt.Printf("ok %d entries included\n", len(entries))

	oldData, err := ioutil.ReadFile(oldFile)
	if err != nil {
		fail("%v", err)
	}
	old := openCheckpoint(oldData, verifiers)
	tp, err := tlog.ProveTree(cp.size, old.size, hr)
	if err != nil {
		fail("tlog.ProveTree: %v", err)
	}
	if err := tlog.CheckTree(tp, cp.size, cp.root, old.size, old.root); err != nil {
		fail("consistency (Go proof): %v", err)
	}
	fmt.Printf("ok consistent with size %d (Go proof)\n", old.size)
	if len(os.Args) == 4 {
		return
	}
	evidence, skeyFile := os.Args[4], os.Args[5]

	files, _ := filepath.Glob(filepath.Join(evidence, "*.tlog-proof"))
	if len(files) == 0 {
		fail("no tlog-proof files in %s", evidence)
	}
	for _, f := range files {
		text, err := ioutil.ReadFile(f)
		if err != nil {
			fail("%v", err)
		}
		parts := bytes.SplitN(text, []byte("\n\n"), 2)
		if len(parts) != 2 {
			fail("%s: no checkpoint", f)
		}
		lines := strings.Split(string(parts[0]), "\n")
		if lines[0] != "c2sp.org/tlog-proof@v1" || !strings.HasPrefix(lines[1], "index ") {
			fail("%s: bad header", f)
		}
		idx, err := strconv.ParseInt(strings.TrimPrefix(lines[1], "index "), 10, 64)
		if err != nil {
			fail("%s: %v", f, err)
		}
		pcp := openCheckpoint(parts[1], verifiers)
		entry, err := ioutil.ReadFile(strings.TrimSuffix(f, ".tlog-proof") + ".entry")
		if err != nil {
			fail("%v", err)
		}
		proof := tlog.RecordProof(parseHashes(lines[2:]))
		if err := tlog.CheckRecord(proof, pcp.size, pcp.root, idx, tlog.RecordHash(entry)); err != nil {
			fail("%s: %v", f, err)
		}
	}
	fmt.Printf("ok %d tlog-proof files (Rust proofs)\n", len(files))

	cons, err := ioutil.ReadFile(filepath.Join(evidence, "consistency.txt"))
	if err != nil {
		fail("%v", err)
	}
	if err := tlog.CheckTree(parseHashes(strings.Split(string(cons), "\n")), cp.size, cp.root, old.size, old.root); err != nil {
		fail("consistency (Rust proof): %v", err)
	}
	fmt.Println("ok consistency (Rust proof)")

	skey, err := ioutil.ReadFile(skeyFile)
	if err != nil {
		fail("%v", err)
	}
	signer, err := note.NewSigner(strings.TrimSpace(string(skey)))
	if err != nil {
		fail("note.NewSigner: %v", err)
	}
	signed, err := note.Sign(&note.Note{Text: "signed by Go with the Rust key\n"}, signer)
	if err != nil {
		fail("note.Sign: %v", err)
	}
	if err := ioutil.WriteFile(filepath.Join(evidence, "go-signed.note"), signed, 0o644); err != nil {
		fail("%v", err)
	}
	fmt.Println("ok signed a note with the Rust signer key")
}
