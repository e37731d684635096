"""Source stages: each adapter turns one detector's output into contract page records."""
