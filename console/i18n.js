// UI text in English and Chinese; the language follows the browser (navigator.languages).
const TEXT = {
  en: {
    title: "dashgate console",
    signin: "Sign in", signout: "Sign out", admin_token: "Admin token",
    signin_hint: "Sign in with the admin token: auth.admin_token in the config, or the one-time token `dashgate serve` printed on its first run.",
    signin_failed: "That is not the admin token.",
    overview: "Overview", keys: "Keys", usage: "Usage", files: "Files", playground: "Playground",
    devices: "Devices", account: "Account", device: "Device",
    last_hour: "Last hour", last_day: "Last day", last_week: "Last week",
    requests: "Requests", errors: "Errors", tokens: "Tokens", tokens_in: "Tokens in", tokens_out: "Tokens out",
    latency: "Latency (ms)", p50: "p50", p99: "p99", ttft: "Time to first token (ms)",
    cost: "Cost", upstreams: "Upstreams", circuit: "Circuit", in_flight: "In flight",
    provider: "Provider", models: "Models", name: "Name", status: "Status", prefix: "Prefix",
    limits: "Limits", allow_list: "Allowed models", last_used: "Last used", expires: "Expires",
    actions: "Actions", create_key: "Create key", create: "Create", revoke: "Revoke", edit: "Edit limits",
    save: "Save", cancel: "Cancel", copy: "Copy", copied: "Copied", chart: "Usage chart",
    all_models: "all", none: "—", never: "never",
    new_key_once: "The new key. It is shown only now: copy it to the device.",
    revoke_confirm: "Revoke this key? Devices using it stop working at once.",
    rpm: "Requests/min", tpm: "Tokens/min", token_quota: "Token quota", quota_period: "Quota period",
    models_hint: "comma-separated; empty = all",
    active: "active", expired: "expired", revoked: "revoked", disabled: "disabled",
    key: "Key", model: "Model", day: "Day", from: "From", to: "To", apply: "Apply", all: "All",
    export_csv: "Export CSV", totals: "Totals",
    prompt: "Prompt", cached: "Cached", completion: "Completion", reasoning: "Reasoning", image: "Image", audio: "Audio",
    filename: "File name", owner: "Owner", size: "Size", purpose: "Purpose", created: "Created", delete: "Delete",
    delete_confirm: "Delete this file?", no_files: "No uploaded files.", no_data: "No requests in this range yet.",
    pg_key: "Key", pg_paste: "or paste a key", pg_model: "Model", pg_message: "Message",
    pg_send: "Send", pg_stop: "Stop", pg_attach: "Attach picture", pg_camera: "Camera", pg_snap: "Take picture",
    pg_remove: "Remove picture", pg_answer: "Answer", pg_image_policy: "What the image policy did",
    pg_before: "Before", pg_after: "After", pg_bytes: "Bytes", pg_est_tokens: "Estimated tokens",
    pg_images: "Images", pg_stripped: "Metadata removed (EXIF, GPS)", pg_resized: "Downscaled", pg_keys_note: "Keys created in this browser tab are listed here; others must be pasted (the gateway keeps only hashes).",
    pg_no_key: "Pick or paste a key first.", pg_camera_failed: "The camera cannot be opened",
    pg_default_message: "What is in this picture?",
    bootstrap_banner: "You are signed in with the one-time bootstrap token. Replace it with a token of your own.",
    replace_token: "Replace admin token", new_admin_token: "The new admin token (shown only now; keep it safe):",
    token_replaced: "The old token no longer works.",
    simulated: "simulated upstream",
  },
  zh: {
    title: "dashgate 控制台",
    signin: "登录", signout: "退出登录", admin_token: "管理员令牌",
    signin_hint: "使用管理员令牌登录：配置中的 auth.admin_token，或 `dashgate serve` 首次运行时打印的一次性令牌。",
    signin_failed: "管理员令牌不正确。",
    overview: "概览", keys: "密钥", usage: "用量", files: "文件", playground: "试验场",
    devices: "设备", account: "账户", device: "设备",
    last_hour: "最近一小时", last_day: "最近一天", last_week: "最近一周",
    requests: "请求数", errors: "错误数", tokens: "Token", tokens_in: "输入 Token", tokens_out: "输出 Token",
    latency: "延迟（毫秒）", p50: "p50", p99: "p99", ttft: "首 Token 时间（毫秒）",
    cost: "费用", upstreams: "上游", circuit: "熔断状态", in_flight: "进行中",
    provider: "提供方", models: "模型", name: "名称", status: "状态", prefix: "前缀",
    limits: "限额", allow_list: "允许的模型", last_used: "最近使用", expires: "过期时间",
    actions: "操作", create_key: "创建密钥", create: "创建", revoke: "吊销", edit: "修改限额",
    save: "保存", cancel: "取消", copy: "复制", copied: "已复制", chart: "用量图",
    all_models: "全部", none: "—", never: "从未",
    new_key_once: "新密钥仅显示这一次：请复制到设备上。",
    revoke_confirm: "确定吊销此密钥？使用它的设备将立即无法访问。",
    rpm: "每分钟请求数", tpm: "每分钟 Token", token_quota: "Token 配额", quota_period: "配额周期",
    models_hint: "用逗号分隔；留空表示全部",
    active: "有效", expired: "已过期", revoked: "已吊销", disabled: "已停用",
    key: "密钥", model: "模型", day: "日期", from: "起", to: "止", apply: "应用", all: "全部",
    export_csv: "导出 CSV", totals: "合计",
    prompt: "输入", cached: "缓存", completion: "输出", reasoning: "推理", image: "图像", audio: "音频",
    filename: "文件名", owner: "所有者", size: "大小", purpose: "用途", created: "创建时间", delete: "删除",
    delete_confirm: "确定删除此文件？", no_files: "没有上传的文件。", no_data: "此时间范围内还没有请求。",
    pg_key: "密钥", pg_paste: "或粘贴密钥", pg_model: "模型", pg_message: "消息",
    pg_send: "发送", pg_stop: "停止", pg_attach: "添加图片", pg_camera: "摄像头", pg_snap: "拍照",
    pg_remove: "移除图片", pg_answer: "回答", pg_image_policy: "图像策略的处理结果",
    pg_before: "处理前", pg_after: "处理后", pg_bytes: "字节数", pg_est_tokens: "估算 Token",
    pg_images: "图片数", pg_stripped: "已移除元数据（EXIF、GPS）", pg_resized: "已缩小", pg_keys_note: "此标签页中创建的密钥会列在这里；其他密钥需粘贴（网关只保存哈希）。",
    pg_no_key: "请先选择或粘贴密钥。", pg_camera_failed: "无法打开摄像头",
    pg_default_message: "这张图片里有什么？",
    bootstrap_banner: "你正在使用一次性引导令牌登录，请替换为你自己的令牌。",
    replace_token: "替换管理员令牌", new_admin_token: "新的管理员令牌（仅显示这一次，请妥善保存）：",
    token_replaced: "旧令牌已失效。",
    simulated: "模拟上游",
  },
};

export const lang = (navigator.languages || [navigator.language || "en"])
  .map((l) => String(l).toLowerCase())
  .find((l) => l.startsWith("zh") || l.startsWith("en"))?.startsWith("zh") ? "zh" : "en";

export function t(key) {
  return TEXT[lang][key] ?? TEXT.en[key] ?? key;
}

export function fmtTime(ms) {
  if (ms == null) return t("never");
  return new Date(ms).toLocaleString(lang === "zh" ? "zh-CN" : "en-GB");
}

export function fmtNum(n) {
  return n == null ? t("none") : Number(n).toLocaleString(lang === "zh" ? "zh-CN" : "en-US");
}
