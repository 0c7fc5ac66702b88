// Package deploytest checks the deployment artefacts under deploy/ and the
// repository's docker-compose.yml against the binaries they run: the compose
// file and every kustomize overlay must load, name images the Dockerfiles
// build, give every service the settings it needs, and probe the ports and
// paths the services serve. It also runs the real binaries to check that a job
// leaves one trace across the four services and moves the documented metrics.
package deploytest
