//+------------------------------------------------------------------+
//| PretradeBridge.mqh - pre-trade risk check for MetaTrader 5       |
//|                                                                  |
//| Asks the pretrade MT5 bridge (`pretrade mt5 run --config ...`)   |
//| for a decision before each OrderSend, over MQL5 sockets, speaking |
//| wire protocol v2 (docs/adapters.md): one JSON object per line.   |
//|                                                                  |
//| FAILS CLOSED: no connection, a send/read error, a timeout, an    |
//| error reply or anything but "verdict":"accept" blocks the order. |
//|                                                                  |
//| Execution reports: an "execution_result" reply (the gateway's    |
//| status, or "queued": the bridge has it on disk and delivers it)  |
//| ends a report. No reply, or an error GATEWAY_UNAVAILABLE,        |
//| INTERNAL or UNSUPPORTED_VERSION, keeps it in a retry queue, sent |
//| again in order (call RetryReports() from OnTimer); the bridge    |
//| delivers each execution id once. The queue is in memory: it does |
//| not survive a restart of the EA or the terminal.                 |
//|                                                                  |
//| The terminal must allow the bridge address: Tools > Options >    |
//| Expert Advisors > "Allow WebRequest for listed URL" (sockets use |
//| the same list). Not compiled in pretrade's CI (MetaEditor only). |
//+------------------------------------------------------------------+
#property strict

#define PRETRADE_PROTOCOL_VERSION 2
#define PRETRADE_MAX_QUEUED_REPORTS 10000   // reports kept for a retry at most
#define PRETRADE_RETRY_MIN_MS 1000          // first retry of a report; doubles up to the max
#define PRETRADE_RETRY_MAX_MS 30000

// outcome of one attempt to hand a report to the bridge
#define PRETRADE_REPORT_DONE    0           // the bridge has it (execution_result)
#define PRETRADE_REPORT_RETRY   1           // no reply or a transient error: send it again later
#define PRETRADE_REPORT_REFUSED 2           // a permanent error (BAD_REQUEST, UNKNOWN_SYMBOL...): dropped

class CPretradeBridge
  {
private:
   int               m_socket;
   string            m_host;
   int               m_port;
   uint              m_timeout_ms;
   string            m_account;
   string            m_strategy;
   long              m_next_id;
   string            m_pending;     // bytes read past the last complete line
   // retry queue of execution reports, oldest first (parallel arrays)
   string            m_report_fields[];
   string            m_report_ids[];
   string            m_report_orders[];
   int               m_report_count;
   ulong             m_retry_at;    // GetTickCount64() of the next retry
   uint              m_retry_ms;    // current retry delay (backoff)

   bool              EnsureConnected(void)
     {
      if(m_socket!=INVALID_HANDLE && SocketIsConnected(m_socket))
         return(true);
      if(m_socket!=INVALID_HANDLE)
         SocketClose(m_socket);
      m_pending="";
      m_socket=SocketCreate();
      if(m_socket==INVALID_HANDLE)
        {
         PrintFormat("pretrade: SocketCreate failed, error %d",GetLastError());
         return(false);
        }
      if(!SocketConnect(m_socket,m_host,m_port,m_timeout_ms))
        {
         PrintFormat("pretrade: cannot connect to %s:%d, error %d",m_host,m_port,GetLastError());
         SocketClose(m_socket);
         m_socket=INVALID_HANDLE;
         return(false);
        }
      return(true);
     }

   bool              SendLine(const string line)
     {
      uchar bytes[];
      int n=StringToCharArray(line+"\n",bytes,0,WHOLE_ARRAY,CP_UTF8)-1; // drop the terminating 0
      return(SocketSend(m_socket,bytes,n)==n);
     }

   // Reads lines until the reply carrying "id":"<id>" arrives (pushed "control" lines are
   // handed to OnControl); false on timeout or error.
   bool              ReadReply(const string id,string &reply)
     {
      string needle="\"id\":\""+id+"\"";
      uint deadline=GetTickCount()+m_timeout_ms;
      while(GetTickCount()<deadline)
        {
         int nl=StringFind(m_pending,"\n");
         if(nl>=0)
           {
            string line=StringSubstr(m_pending,0,nl);
            m_pending=StringSubstr(m_pending,nl+1);
            if(StringFind(line,needle)>=0)
              {
               reply=line;
               return(true);
              }
            if(StringFind(line,"\"type\":\"control\"")>=0)
               OnControl(line);
            continue;
           }
         uint readable=SocketIsReadable(m_socket);
         if(readable==0)
           {
            Sleep(1);
            continue;
           }
         uchar buffer[];
         int got=SocketRead(m_socket,buffer,readable,deadline-GetTickCount());
         if(got<=0)
            return(false);
         m_pending+=CharArrayToString(buffer,0,got,CP_UTF8);
        }
      return(false);
     }

   string            Request(const string type,const string fields)
     {
      if(!EnsureConnected())
         return("");
      string id=IntegerToString(m_next_id++);
      string line=StringFormat("{\"v\":%d,\"id\":\"%s\",\"type\":\"%s\",%s}",
                               PRETRADE_PROTOCOL_VERSION,id,type,fields);
      string reply="";
      if(!SendLine(line) || !ReadReply(id,reply))
        {
         SocketClose(m_socket);
         m_socket=INVALID_HANDLE;
         return("");
        }
      return(reply);
     }

   // One attempt to hand a report to the bridge.
   int               SendReport(const string fields,const string execution_id,const string client_order_id)
     {
      string reply=Request("execution",fields);
      if(reply=="")
        {
         PrintFormat("pretrade: execution %s of %s: no reply from the bridge: kept for a retry",execution_id,client_order_id);
         return(PRETRADE_REPORT_RETRY);
        }
      if(StringFind(reply,"\"type\":\"execution_result\"")>=0)
        {
         if(StringFind(reply,"\"status\":\"unknown_order\"")>=0 || StringFind(reply,"\"status\":\"overfill\"")>=0)
            PrintFormat("pretrade: execution %s of %s: %s",execution_id,client_order_id,reply);
         return(PRETRADE_REPORT_DONE);   // applied / duplicate / unknown_order / overfill / queued
        }
      if(StringFind(reply,"\"code\":\"GATEWAY_UNAVAILABLE\"")>=0 || StringFind(reply,"\"code\":\"INTERNAL\"")>=0 ||
         StringFind(reply,"\"code\":\"UNSUPPORTED_VERSION\"")>=0)   // an older bridge: kept until it is upgraded
        {
         PrintFormat("pretrade: execution %s of %s not taken yet, kept for a retry: %s",execution_id,client_order_id,reply);
         return(PRETRADE_REPORT_RETRY);
        }
      if(StringFind(reply,"\"type\":\"error\"")>=0)
        {
         PrintFormat("pretrade: execution %s of %s REFUSED by the bridge (not retried): %s",execution_id,client_order_id,reply);
         return(PRETRADE_REPORT_REFUSED);
        }
      PrintFormat("pretrade: execution %s of %s: unexpected reply, kept for a retry: %s",execution_id,client_order_id,reply);
      return(PRETRADE_REPORT_RETRY);
     }

   void              RemoveFirstReport(void)
     {
      for(int i=1;i<m_report_count;i++)
        {
         m_report_fields[i-1]=m_report_fields[i];
         m_report_ids[i-1]=m_report_ids[i];
         m_report_orders[i-1]=m_report_orders[i];
        }
      m_report_count--;
      ArrayResize(m_report_fields,m_report_count);
      ArrayResize(m_report_ids,m_report_count);
      ArrayResize(m_report_orders,m_report_count);
     }

   // Sends the queued reports in order, stopping at the first that has to be retried.
   void              FlushReports(void)
     {
      while(m_report_count>0)
        {
         int outcome=SendReport(m_report_fields[0],m_report_ids[0],m_report_orders[0]);
         if(outcome==PRETRADE_REPORT_RETRY)
           {
            m_retry_at=GetTickCount64()+m_retry_ms;
            m_retry_ms=(uint)MathMin(2*(double)m_retry_ms,(double)PRETRADE_RETRY_MAX_MS);
            return;
           }
         RemoveFirstReport();
         m_retry_ms=PRETRADE_RETRY_MIN_MS;
        }
     }

public:
                     CPretradeBridge(void): m_socket(INVALID_HANDLE),m_port(5757),m_timeout_ms(2500),m_next_id(1),
                                            m_report_count(0),m_retry_at(0),m_retry_ms(PRETRADE_RETRY_MIN_MS) {}
                    ~CPretradeBridge(void) { if(m_socket!=INVALID_HANDLE) SocketClose(m_socket); }

   void              Init(const string host,const int port,const uint timeout_ms,const string account,const string strategy="")
     {
      m_host=host;
      m_port=port;
      m_timeout_ms=timeout_ms;
      m_account=account;
      m_strategy=strategy;
     }

   // Kill switch from the gateway: override to cancel working orders (the default logs).
   virtual void      OnControl(const string line)
     {
      PrintFormat("pretrade: control from gateway: %s",line);
     }

   // The pre-trade check. True only on an explicit accept; `reason` gets the reply (or why
   // there is none). Prices/volumes are normalized exactly as OrderSend will send them.
   bool              Check(MqlTradeRequest &request,const string client_order_id,string &reason)
     {
      int digits=(int)SymbolInfoInteger(request.symbol,SYMBOL_DIGITS);
      bool is_buy=(request.type==ORDER_TYPE_BUY || request.type==ORDER_TYPE_BUY_LIMIT ||
                   request.type==ORDER_TYPE_BUY_STOP || request.type==ORDER_TYPE_BUY_STOP_LIMIT);
      bool is_market=(request.action==TRADE_ACTION_DEAL);
      double price=NormalizeDouble(request.price,digits);
      request.price=price;
      string fields=StringFormat(
         "\"account\":\"%s\",\"strategy\":\"%s\",\"symbol\":\"%s\",\"side\":\"%s\",\"order_type\":\"%s\","
         "\"volume\":%s,\"price\":%s,\"client_order_id\":\"%s\"",
         m_account,m_strategy,request.symbol,is_buy?"buy":"sell",is_market?"market":"limit",
         DoubleToString(request.volume,8),DoubleToString(price,digits),client_order_id);
      string reply=Request("check",fields);
      if(reply=="")
        {
         reason="no decision from the pretrade bridge (timeout or connection error): blocked";
         PrintFormat("pretrade: %s %s",client_order_id,reason);
         return(false);
        }
      if(StringFind(reply,"\"verdict\":\"accept\"")>=0)
         return(true);
      reason=reply;
      PrintFormat("pretrade: order %s REJECTED: %s",client_order_id,reply);
      return(false);
     }

   // A deal (exec_type "fill" / "partial_fill", with volume and price) or the end of an
   // order ("cancelled", "rejected", "expired"); keeps the gateway's exposure right. The
   // report joins the retry queue and the queue is sent in order: true when the bridge took
   // it now, false when it is kept for a retry (RetryReports) or was refused.
   bool              ReportExecution(const string client_order_id,const string exec_type,const string execution_id,
                                     const string symbol,const double volume,const double price)
     {
      int digits=(int)SymbolInfoInteger(symbol,SYMBOL_DIGITS);
      string fields=StringFormat(
         "\"account\":\"%s\",\"client_order_id\":\"%s\",\"exec_type\":\"%s\",\"execution_id\":\"%s\","
         "\"symbol\":\"%s\",\"volume\":%s,\"price\":%s",
         m_account,client_order_id,exec_type,execution_id,symbol,DoubleToString(volume,8),
         DoubleToString(NormalizeDouble(price,digits),digits));
      if(m_report_count>=PRETRADE_MAX_QUEUED_REPORTS)
        {
         PrintFormat("pretrade: execution %s of %s NOT REPORTED: %d reports already wait for the bridge",
                     execution_id,client_order_id,m_report_count);
         return(false);
        }
      ArrayResize(m_report_fields,m_report_count+1);
      ArrayResize(m_report_ids,m_report_count+1);
      ArrayResize(m_report_orders,m_report_count+1);
      m_report_fields[m_report_count]=fields;
      m_report_ids[m_report_count]=execution_id;
      m_report_orders[m_report_count]=client_order_id;
      m_report_count++;
      FlushReports();   // older reports first: the bridge delivers them in the order it got them
      for(int i=0;i<m_report_count;i++)
         if(m_report_ids[i]==execution_id)
            return(false);
      return(true);
     }

   // From OnTimer: re-sends the queued reports once their retry time has come.
   void              RetryReports(void)
     {
      if(m_report_count>0 && GetTickCount64()>=m_retry_at)
         FlushReports();
     }

   // Reports waiting for a retry.
   int               PendingReports(void) const { return(m_report_count); }
  };

// Drop-in OrderSend replacement: checks first, fails closed.
bool PretradeOrderSend(CPretradeBridge &bridge,MqlTradeRequest &request,MqlTradeResult &result,const string client_order_id)
  {
   string reason;
   if(!bridge.Check(request,client_order_id,reason))
     {
      ZeroMemory(result);
      result.retcode=TRADE_RETCODE_REJECT;
      result.comment=StringSubstr("pretrade: "+reason,0,31);
      return(false);
     }
   request.comment=client_order_id;   // ties the deals back to the checked order
   return(OrderSend(request,result));
  }
//+------------------------------------------------------------------+
