// The task with an answer that `condense context-eval --documents FILE` scores every context
// compressor on: each held-out document (the file's last `count`; compressors/context_documents.h)
// reaches the frozen decoder through context.task_template ("Background: {context} ... Answer:")
// and the decoder must give the document's answer (for tools/gcide_headwords.py: the headword a
// GCIDE definition defines). The context in place of the placeholder is, per condition:
//   none        nothing
//   full        the document's tokens (at most `max_tokens`)
//   compressed  the trained compressor's vectors (xRAG: the projected embedding)
//   truncated   the document's first k tokens, k = the compressed positions
//   mean_pool   mean-pooled token embeddings (groups of pooling_factor; xRAG: one mean)
//   untrained   the compressor as initialized, before training
//   compressed_other  the compressed vectors of the next document: the control for a learned
//               prompt that helps whatever the content
// Measures: answer NLL (mean over its tokens), exact match (the greedy continuation starts with
// the answer's tokens: teacher-forced argmax right on every answer token), gap closed on the NLL;
// for xRAG also the paraphrase's teacher-forced token accuracy (reconstruction) with the same
// conditions; seconds per document and context positions (what the KV cache holds for the
// context), full versus compressed, measured in the same run.
#pragma once
#include <nlohmann/json.hpp>

#include "compressors/context_compressor.h"
#include "compressors/context_documents.h"
#include "text/tokenizer.h"

namespace condense {

nlohmann::json document_task(LlamaForCausalLM& decoder, ContextCompressor& trained,
                             ContextCompressor& untrained, const ContextConfig& cc,
                             const DocumentSet& set, const Tokenizer& tok, int64_t count,
                             int64_t max_tokens);

}  // namespace condense
