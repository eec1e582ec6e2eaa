// Package systemdunits holds the systemd units and example env files of a
// ccat-staging deployment, and the tests that check their hardening.
package systemdunits
