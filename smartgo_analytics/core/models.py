"""The embedding model the pipeline calls: Amazon Titan Multimodal Embeddings G1, its id, the vector
lengths it makes and its on-demand price. Settings check TITAN_EMBEDDING_DIMENSION against it,
the embedder calls it."""

TITAN_IMAGE_MODEL = "amazon.titan-embed-image-v1"
TITAN_DIMENSIONS = (256, 384, 1024)
# On-demand price of one Titan Multimodal Embeddings image input, USD.
TITAN_PRICE_PER_IMAGE = 0.00006
