"""Platform-aware architecture search (Tan et al. 2019): controllers, evaluators, trial storage."""
