package dest

// WithoutLock returns l committing without the commit lock, as an instance
// on another host does when the file system does not share flocks: a fault
// the tests cannot cause for real on one machine.
func WithoutLock(l Location) Location {
	l.noLock = true
	return l
}
