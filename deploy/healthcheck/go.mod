module github.com/medius-platform/medius/deploy/healthcheck

go 1.26.0
