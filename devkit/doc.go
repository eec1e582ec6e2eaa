// Package devkit is the module of what tests, the demo and the benchmarks
// need and production never does: an embedded JetStream server, a test
// database, a test S3 server, a polling helper and (in its own module,
// devkit/inproc) the in-process launcher of the whole pipeline. Keeping them
// here keeps shared/ the production surface the services build on.
package devkit
