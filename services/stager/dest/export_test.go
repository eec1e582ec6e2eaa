package dest

// WithoutLock returns l committing without the commit lock, as an instance
// on another host does when the file system does not share flocks: a fault
// the tests cannot cause for real on one machine.
func WithoutLock(l Location) Location {
	l.noLock = true
	return l
}

// Queued is how many commits wait in c's queue (the leader's among them
// until it holds the lock and takes its batch).
func Queued(c *Committer) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.queue)
}
