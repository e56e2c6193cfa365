"""The compute worker's durable machinery: the journal and its outbox, the undo
rules and their replay (recovery), host-wide locks, when a cast is acknowledged,
and the service loop. The pipeline itself is attachworker.manager."""
