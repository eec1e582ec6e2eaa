package unpack

import (
	"errors"
	"hash/maphash"
	"slices"
	"strings"
)

// kind is what a name of the extracted tree is.
type kind uint8

const (
	kindDir      kind = iota + 1 // a directory entry of the archive
	kindImplicit                 // a directory made for an entry below it
	kindFile                     // a regular file or a hard link to one
	kindSymlink
)

func (k kind) isDir() bool { return k == kindDir || k == kindImplicit }

// node is one name of the extracted tree. The tree is the extractor's whole
// memory of the archive: every entry costs one node (16 bytes), one slot of
// the index (4 bytes, at most 3/4 full) and its last path element once in
// the arena, instead of its full name in several maps. Full paths exist
// only when the result is walked.
type node struct {
	parent int32
	off    uint32 // name in the arena
	n      uint16 // its length (NAME_MAX is 255)
	kind   kind
	ref    int32 // kindFile: index in files; kindSymlink: index in links
}

type fileRec struct {
	node int32
	size int64
}

type linkRec struct {
	off, n uint32 // target in the arena
}

// tree mirrors what has been written under the extraction directory, so
// every decision about a name (duplicate, conflict, what a link resolves to)
// is made against the tree as the kernel will see it, not against text.
type tree struct {
	seed  maphash.Seed
	nodes []node
	arena []byte
	// slots is an open-addressing index of (parent, name) -> node+1 (0 is
	// empty), linear probing, a power of two long; it stores no keys, the
	// nodes are the keys.
	slots []int32
	files []fileRec  // in archive order, hard links included
	sums  [][32]byte // each file's sha256, parallel to files, when hashing
	links []linkRec
}

const rootNode = 0

func newTree() *tree {
	return &tree{seed: maphash.MakeSeed(), nodes: []node{{parent: -1, kind: kindDir}}, slots: make([]int32, 1024)}
}

func (t *tree) hash(parent int32, name string) uint64 {
	return maphash.String(t.seed, name) ^ uint64(uint32(parent))*0x9E3779B97F4A7C15
}

func (t *tree) name(i int32) string {
	n := t.nodes[i]
	return string(t.arena[n.off : n.off+uint32(n.n)])
}

// is reports whether node i is called name in dir, without allocating.
func (t *tree) is(i, dir int32, name string) bool {
	n := t.nodes[i]
	return n.parent == dir && string(t.arena[n.off:n.off+uint32(n.n)]) == name
}

// child returns the node called name in dir, or -1.
func (t *tree) child(dir int32, name string) int32 {
	mask := uint64(len(t.slots) - 1)
	for i := t.hash(dir, name) & mask; ; i = (i + 1) & mask {
		s := t.slots[i]
		if s == 0 {
			return -1
		}
		if t.is(s-1, dir, name) {
			return s - 1
		}
	}
}

func (t *tree) add(dir int32, name string, k kind) int32 {
	i := int32(len(t.nodes))
	t.nodes = append(t.nodes, node{parent: dir, off: uint32(len(t.arena)), n: uint16(len(name)), kind: k, ref: -1})
	t.arena = append(t.arena, name...)
	if len(t.nodes)*4 > len(t.slots)*3 {
		t.slots = make([]int32, 2*len(t.slots))
		for j := 1; j < len(t.nodes); j++ {
			t.insert(int32(j))
		}
	} else {
		t.insert(i)
	}
	return i
}

func (t *tree) insert(i int32) {
	n := t.nodes[i]
	mask := uint64(len(t.slots) - 1)
	h := t.hash(n.parent, string(t.arena[n.off:n.off+uint32(n.n)]))
	for j := h & mask; ; j = (j + 1) & mask {
		if t.slots[j] == 0 {
			t.slots[j] = i + 1
			return
		}
	}
}

// find returns the node of a clean relative path without following links:
// every element but the last must be a directory. -1 when there is none.
func (t *tree) find(p string) int32 {
	cur := int32(rootNode)
	for p != "" {
		elem, rest, _ := strings.Cut(p, "/")
		if !t.nodes[cur].kind.isDir() {
			return -1
		}
		cur = t.child(cur, elem)
		if cur < 0 {
			return -1
		}
		p = rest
	}
	return cur
}

// path rebuilds the slash path of node i (iteratively: a hostile name may
// have hundreds of thousands of elements).
func (t *tree) path(i int32, buf []byte) []byte {
	buf = buf[:0]
	n := 0
	for j := i; j > rootNode; j = t.nodes[j].parent {
		n += int(t.nodes[j].n) + 1
	}
	if n == 0 {
		return buf
	}
	buf = slices.Grow(buf, n-1)[:n-1]
	end := n - 1
	for j := i; j > rootNode; j = t.nodes[j].parent {
		nd := t.nodes[j]
		start := end - int(nd.n)
		copy(buf[start:end], t.arena[nd.off:nd.off+uint32(nd.n)])
		if start > 0 {
			buf[start-1] = '/'
		}
		end = start - 1
	}
	return buf
}

func (t *tree) addLink(i int32, target string) {
	t.nodes[i].ref = int32(len(t.links))
	t.links = append(t.links, linkRec{off: uint32(len(t.arena)), n: uint32(len(target))})
	t.arena = append(t.arena, target...)
}

func (t *tree) target(i int32) string {
	l := t.links[t.nodes[i].ref]
	return string(t.arena[l.off : l.off+l.n])
}

// maxFollow is how many links one resolution may follow, as Linux's
// MAXSYMLINKS: a chain longer than that is a loop or an attack.
const maxFollow = 40

var (
	errEscapes = errors.New("leaves the package directory")
	errLoop    = errors.New("follows more than 40 links (a loop)")
)

// resolve follows target from directory dir element by element, the way
// the kernel does when a pipeline opens the path: a link met on the way is
// replaced by its own target, read relative to the directory holding it,
// and ".." goes to the parent of where the walk really is, not of the
// text. It returns errEscapes as soon as a step would leave the package
// root. A name that does not exist (yet), or a file used as a directory,
// stops the kernel; the rest is then judged as text, so that a link
// dangling today cannot escape once a pipeline creates what it names.
func (t *tree) resolve(dir int32, target string) error {
	if strings.HasPrefix(target, "/") {
		return errEscapes
	}
	cur, virt, follows := dir, 0, 0
	stack := push(nil, target)
	for len(stack) > 0 {
		elem := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		switch {
		case elem == "" || elem == ".":
			continue
		case elem == "..":
			switch {
			case virt > 0:
				virt--
			case cur == rootNode:
				return errEscapes
			default:
				cur = t.nodes[cur].parent
			}
			continue
		case virt > 0:
			virt++
			continue
		}
		c := t.child(cur, elem)
		switch {
		case c < 0 || t.nodes[c].kind == kindFile:
			virt = 1
		case t.nodes[c].kind.isDir():
			cur = c
		default: // a link: continue with its target, from where it lies
			if follows++; follows > maxFollow {
				return errLoop
			}
			next := t.target(c)
			if strings.HasPrefix(next, "/") {
				return errEscapes
			}
			stack = push(stack, next)
		}
	}
	return nil
}

// push adds p's elements to a stack so that the first is popped first.
func push(stack []string, p string) []string {
	elems := strings.Split(p, "/")
	for i := len(elems) - 1; i >= 0; i-- {
		stack = append(stack, elems[i])
	}
	return stack
}
