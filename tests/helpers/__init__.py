"""Programs and utilities the tests run in separate processes."""
