# NGC PyTorch: CUDA, cuDNN, NCCL, PyTorch, Triton and TensorRT, built and tuned by NVIDIA.
FROM nvcr.io/nvidia/pytorch:25.10-py3

WORKDIR /workspace/gpt2-softplus
COPY requirements.txt requirements-dev.txt ./
# Keep the container's own torch and triton: pin them to what is installed while the rest installs.
RUN pip list --format=freeze | grep -iE '^(torch|triton|pytorch-triton)==' > /tmp/keep.txt \
 && pip install --no-cache-dir -c /tmp/keep.txt -r requirements.txt -r requirements-dev.txt
COPY . .

CMD ["bash"]
