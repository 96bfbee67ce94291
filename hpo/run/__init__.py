"""Running a study: task splits, the worker (everything loaded once), one trial, the exact
trial budget, and local worker processes. Imports no monitoring, export or CLI code: what a
trial publishes goes through a callback the CLI hands in."""
