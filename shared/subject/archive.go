package subject

// Removed is the subject of archive.package.removed events (ARCHIVE stream).
const Removed = "archive.package.removed"
