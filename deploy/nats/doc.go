// Package natscluster holds the NATS configuration of a clustered
// ccat-staging deployment (nats-server.conf, accounts.conf) and the tests
// that run it: three nodes on loopback ports, every user's permissions
// proved both ways, and a stream leader failover that loses nothing.
package natscluster
