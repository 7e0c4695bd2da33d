"""classify: scikit-learn heads on cached embeddings, honest subject-aware evaluation, report, plots, bundles."""
