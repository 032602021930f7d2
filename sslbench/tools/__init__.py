"""Result records, the leaderboard, plots, and the end-to-end suite runner."""
